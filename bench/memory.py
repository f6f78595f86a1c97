"""Memory benchmark: 100k memories for one user among 10, 384-d vectors.

Prints recall@10 of the vector search against exact brute force (numpy), recall latency
p50/p95 (vector KNN alone, and the full hybrid recall with a real query embedding),
and turns/s written with their embeddings. Baselines measured in the same run: numpy
brute force over the same vectors, and turns/s written without embeddings.

    .venv/bin/python bench/memory.py [--memories 100000] [--queries 200] [--turns 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mongars_edge.memory.embed import create_embedder
from mongars_edge.memory.store import MemoryStore
from mongars_edge.settings import Settings

USERS = 10
DIM = 384
_WORD_TEXT = """chien chat vélo tennis café thé montréal québec lévis neige soleil pluie musique
piano violon cuisine recette pain fromage voiture train avion travail bureau école enfant dog cat
bike coffee tea snow music kitchen bread cheese car work office school child"""
WORDS = tuple(_WORD_TEXT.split())


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _unit(rng: np.random.Generator, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


async def _fill(store: MemoryStore, user_ids: list[int], counts: list[int], seed: int) -> Any:
    """Insert memories with random unit vectors straight through the writer, in batches."""
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    main_vectors = None
    now = time.time()
    for user_id, count in zip(user_ids, counts, strict=True):
        vectors = _unit(rng, count)
        if main_vectors is None:
            main_vectors = vectors
        ids: list[int] = []
        for start in range(0, count, 5000):
            chunk = vectors[start : start + 5000]

            def job(
                conn: Any,
                chunk: Any = chunk,
                start: int = start,
                uid: int = user_id,
                ids: list[int] = ids,
            ) -> None:
                for i, vector in enumerate(chunk):
                    text = " ".join(pyrng.choices(WORDS, k=8)) + f" #{start + i}"
                    cur = conn.execute(
                        "INSERT INTO memories(user_id, text, kind, importance, created, updated,"
                        " embedded) VALUES (?, ?, 'fact', ?, ?, ?, 1)",
                        (uid, text, pyrng.random(), now - pyrng.random() * 9e6, now),
                    )
                    ids.append(int(cur.lastrowid))
                    conn.execute(
                        "INSERT INTO memories_vec(item_id, user_id, embedding) VALUES (?, ?, ?)",
                        (cur.lastrowid, uid, vector.tobytes()),
                    )

            await store._writer.run(job)
        if user_id == user_ids[0]:
            main_ids = np.asarray(ids)
    return main_vectors, main_ids


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    embedder = create_embedder(Settings().embed_model)  # the shipped default
    embedder.wait_loaded()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.db) if args.db else Path(tmp) / "bench.db"
        async with MemoryStore.open(db, embedder) as store:
            users = [await store.create_user(f"user{i}") for i in range(USERS)]
            counts = [args.memories] + [args.others] * (USERS - 1)
            t0 = time.perf_counter()
            vectors, ids = await _fill(store, [u.id for u in users], counts, seed=7)
            out["fill_s"] = time.perf_counter() - t0
            out["rows_total"] = sum(counts)
            main = users[0].id
            queries = _unit(np.random.default_rng(11), args.queries)

            # Exact baseline: numpy brute force over the same user's vectors, in memory.
            brute_ms, truth = [], []
            for q in queries:
                t = time.perf_counter()
                scores = vectors @ q
                top = np.argpartition(-scores, 10)[:10]
                brute_ms.append((time.perf_counter() - t) * 1000)
                truth.append(set(ids[top].tolist()))

            # The recall path: exact search over the user's vectors in RAM (memory/vcache.py).
            t = time.perf_counter()
            await store.vcache.search(store._readers, "memories", main, queries[0].tobytes(), 10)
            out["cache_build_s"] = time.perf_counter() - t
            knn_ms, found = [], 0
            for q, expected in zip(queries, truth, strict=True):
                t = time.perf_counter()
                hits = await store.vcache.search(store._readers, "memories", main, q.tobytes(), 10)
                knn_ms.append((time.perf_counter() - t) * 1000)
                assert hits is not None
                found += len(expected & {h[0] for h in hits})
            out["recall_at_10"] = found / (10 * len(queries))
            out["knn_ms"] = {"p50": _pct(knn_ms, 50), "p95": _pct(knn_ms, 95)}
            out["numpy_brute_ms"] = {"p50": _pct(brute_ms, 50), "p95": _pct(brute_ms, 95)}

            # Baseline: the same KNN straight on vec0 (a scan of the user's partition).
            vec0_ms, vec0_found = [], 0
            for q, expected in list(zip(queries, truth, strict=True))[: args.vec0_queries]:
                t = time.perf_counter()
                rows = await store._readers.fetchall(
                    "SELECT item_id FROM memories_vec WHERE embedding MATCH ? AND k = 10"
                    " AND user_id = ?",
                    (q.tobytes(), main),
                )
                vec0_ms.append((time.perf_counter() - t) * 1000)
                vec0_found += len(expected & {r[0] for r in rows})
            out["vec0_recall_at_10"] = vec0_found / (10 * args.vec0_queries)
            out["vec0_ms"] = {"p50": _pct(vec0_ms, 50), "p95": _pct(vec0_ms, 95)}

            # Full hybrid recall (real query embedding + KNN + FTS5 + fusion).
            await embedder.query("échauffement")  # first call loads the model
            texts = [" ".join(random.Random(i).choices(WORDS, k=5)) for i in range(args.hybrid)]
            embed_ms, hybrid_ms = [], []
            for text in texts:
                t = time.perf_counter()
                await embedder.query(text)
                embed_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                await store.recall(main, text, limit=10)
                hybrid_ms.append((time.perf_counter() - t) * 1000)
            out["query_embed_ms"] = {"p50": _pct(embed_ms, 50), "p95": _pct(embed_ms, 95)}
            out["hybrid_recall_ms"] = {"p50": _pct(hybrid_ms, 50), "p95": _pct(hybrid_ms, 95)}

            # Turns written: baseline without vectors, then with their vectors in the same run.
            conv = await store.create_conversation(main)
            pairs = [
                (f"Question {i}: " + " ".join(random.Random(i).choices(WORDS, k=12)),
                 f"Réponse {i}: " + " ".join(random.Random(-i).choices(WORDS, k=40)))
                for i in range(args.turns)
            ]  # fmt: skip
            # Baseline: the same add_turn on a store opened without an embedder.
            async with MemoryStore.open(Path(tmp) / "plain.db") as plain_store:
                who = await plain_store.create_user("plain")
                plain_conv = await plain_store.create_conversation(who.id)
                t = time.perf_counter()
                for question, answer in pairs:
                    await plain_store.add_turn(who.id, plain_conv.id, question, answer)
                plain = args.turns / (time.perf_counter() - t)
            await store.flush_vectors()
            t = time.perf_counter()
            for question, answer in pairs:
                await store.add_turn(main, conv.id, question, answer)
            await store.flush_vectors()
            with_vectors = args.turns / (time.perf_counter() - t)
            out["turns_per_s_plain"] = plain
            out["turns_per_s_with_vectors"] = with_vectors
            out["integrity"] = await store.integrity_check()
    await embedder.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=2_000, help="memories per other user")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--hybrid", type=int, default=50)
    parser.add_argument("--vec0-queries", type=int, default=30)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--db", help="keep the database at this path")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"rows: {r['rows_total']} ({args.memories} for one user among {USERS}); "
          f"fill {r['fill_s']:.1f} s")  # fmt: skip
    print(f"recall@10 of the vector search vs exact numpy brute force: {r['recall_at_10']:.3f} "
          f"(target >= 0.95); vec0 alone {r['vec0_recall_at_10']:.3f}")  # fmt: skip
    k, b, v = r["knn_ms"], r["numpy_brute_ms"], r["vec0_ms"]
    print(f"vector KNN as recall runs it (RAM index, built in {r['cache_build_s']:.1f} s): "
          f"p50 {k['p50']:.2f} ms  p95 {k['p95']:.2f} ms (target 10 / 25)")  # fmt: skip
    print(f"baseline vec0 partition scan: p50 {v['p50']:.2f} ms  p95 {v['p95']:.2f} ms; "
          f"ratio vec0/RAM index p50 {v['p50'] / k['p50']:.1f}x")  # fmt: skip
    print(f"baseline numpy brute force in the bench: p50 {b['p50']:.2f} ms  p95 {b['p95']:.2f} ms")
    e, h = r["query_embed_ms"], r["hybrid_recall_ms"]
    print(f"query embedding p50 {e['p50']:.1f} ms  p95 {e['p95']:.1f} ms")
    print(f"hybrid recall (embed + KNN + FTS5 + fusion) p50 {h['p50']:.1f} ms  "
          f"p95 {h['p95']:.1f} ms")  # fmt: skip
    print(f"turns/s written: {r['turns_per_s_with_vectors']:.1f} with their vectors, "
          f"{r['turns_per_s_plain']:.1f} without (baseline); ratio "
          f"{r['turns_per_s_with_vectors'] / r['turns_per_s_plain']:.3f}")  # fmt: skip
    print(f"integrity_check: {r['integrity']}")
    print(f"(load average now: {statistics.mean(_loadavg()):.1f} on this machine)")


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


if __name__ == "__main__":
    main()
