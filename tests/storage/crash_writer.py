"""Run by test_store_crash.py: write as fast as possible from many tasks; after each write
returns, print what it wrote ("g <id>" or "f <generation id> <user id>"). Killed with -9."""

from __future__ import annotations

import asyncio
import sys

from storage.store import Store


async def main(path: str) -> None:
    async with Store.open(path) as store:

        async def worker(worker_id: int) -> None:
            for n in range(1_000_000):
                generation_id = await store.record_generation(
                    user_id=worker_id, task="story", model_id="m", params={"seed": n},
                    messages=[{"role": "user", "content": f"prompt {worker_id}-{n}"}],
                )  # fmt: skip
                print(f"g {generation_id}", flush=True)
                await store.record_feedback(generation_id, 10_000 + worker_id, thumbs="up")
                print(f"f {generation_id} {10_000 + worker_id}", flush=True)

        await asyncio.gather(*(worker(w) for w in range(20)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
