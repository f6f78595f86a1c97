"""Speech test material: sentences to speak and hear, and the word error rate between texts."""

from __future__ import annotations

import re

SENTENCES = [
    "The kitchen lights are turned off for the night.",
    "Please remind me to buy milk and fresh bread tomorrow.",
    "The weather will be cloudy with a chance of rain.",
    "My favorite color is green like the summer grass.",
    "She opened the window to let the cool air inside.",
    "We should water the garden before the sun goes down.",
    "The train leaves the station early in the morning.",
    "Could you play some quiet music in the living room?",
    "The children are reading a story about a brave dog.",
    "Dinner is ready when the oven timer rings again.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: word-level edit distance over the reference length."""
    ref = words(reference)
    return edits(ref, words(hypothesis)) / max(1, len(ref))


def edits(ref: list[str], hyp: list[str]) -> int:
    """Word-level edit distance (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]
