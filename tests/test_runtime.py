"""Process helpers: what a stuck shutdown logs about the tasks it waits for."""

from __future__ import annotations

import asyncio

from shared.runtime import pending_tasks


async def test_pending_tasks_name_the_innermost_await():
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer(), name="stuck-job")
    await asyncio.sleep(0)
    try:
        (line,) = [line for line in pending_tasks() if line.startswith("stuck-job: ")]
        chain = line.removeprefix("stuck-job: ").split(" > ")
        assert [step.split(" ")[0] for step in chain[:2]] == [
            "test_pending_tasks_name_the_innermost_await.<locals>.outer",
            "test_pending_tasks_name_the_innermost_await.<locals>.inner",
        ]
        assert chain[-1].startswith("Event.wait (")
    finally:
        gate.set()
        await task
