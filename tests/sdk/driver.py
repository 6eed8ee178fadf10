"""Drive the official ``casdoor`` SDK against minidoor; run with ``.venv-sdk/bin/python`` (see ``make sdk-venv``).

Reads ``{"sdk": {endpoint, client_id, client_secret, certificate, org_name, application_name}, "ops": [...]}``
on stdin and prints one JSON result per op, in order: ``{"ok": true, "value": ...}``, or ``{"ok": false,
"error": "..."}`` when the SDK raised (its message is the server's ``msg``). Each op is ``[name, *args]``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from casdoor import CasdoorSDK
from casdoor.user import User


def _user(user: User | None) -> dict[str, Any] | None:
    return None if user is None else dict(user.to_dict())


def _update(sdk: CasdoorSDK, name: str, changes: dict[str, Any], columns: list[str] | None = None) -> Any:
    """What a developer does: read the user, change some attributes, send the whole object back."""
    user = sdk.get_user(name)
    for key, value in changes.items():
        setattr(user, key, value)
    if columns:
        return sdk.update_user_for_columns(user, columns)
    return sdk.update_user(user)


def run(sdk: CasdoorSDK, op: str, args: list[Any]) -> Any:
    match op:
        case "parse_jwt_token":
            return sdk.parse_jwt_token(args[0])
        case "get_user":
            return _user(sdk.get_user(args[0]))
        case "get_users":
            return [_user(user) for user in sdk.get_users()]
        case "update_user":
            return _update(sdk, args[0], args[1])
        case "update_user_for_columns":
            return _update(sdk, args[0], args[1], args[2])
        case "get_account":
            return _user(sdk.with_access_token(args[0]).get_account())
        case "refresh_oauth_tokens":
            return sdk.refresh_oauth_tokens(args[0])
        case "delete_user":
            return sdk.delete_user(sdk.get_user(args[0]))
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    request = json.load(sys.stdin)
    sdk = CasdoorSDK(**request["sdk"])
    results = []
    for op, *args in request["ops"]:
        try:
            results.append({"ok": True, "value": run(sdk, op, args)})
        except Exception as exc:  # the SDK raises bare Exceptions carrying the server's msg
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    json.dump(results, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
