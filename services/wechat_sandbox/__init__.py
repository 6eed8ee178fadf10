"""The WeChat sandbox: WeChat's ``jscode2session`` wire protocol on a local port, with controls for tests."""

from __future__ import annotations

from services.wechat_sandbox.app import SANDBOX, SandboxState, create_app

__all__ = ["SANDBOX", "SandboxState", "create_app"]
