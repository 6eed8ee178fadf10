"""Process helpers: what a stuck shutdown logs about the tasks it waits for."""

from __future__ import annotations

import asyncio

from shared.runtime import pending_tasks


class TestPendingTasks:
    async def test_name_the_innermost_await(self):
        """Each unfinished task is named with its chain of awaits, outermost first, down to what it waits on."""
        gate, waiting = asyncio.Event(), asyncio.Event()

        async def inner() -> None:
            waiting.set()
            await gate.wait()

        async def outer() -> None:
            await inner()

        task = asyncio.create_task(outer(), name="stuck-job")
        await waiting.wait()  # set just before the task suspends in gate.wait(), which it did when this returns
        try:
            (line,) = [line for line in pending_tasks() if line.startswith("stuck-job: ")]
            chain = line.removeprefix("stuck-job: ").split(" > ")
            assert [step.split(" ")[0] for step in chain[:2]] == [
                "TestPendingTasks.test_name_the_innermost_await.<locals>.outer",
                "TestPendingTasks.test_name_the_innermost_await.<locals>.inner",
            ]
            assert chain[-1].startswith("Event.wait (")
        finally:
            gate.set()
            await task
