"""The two small tools of a decode step: a reusable llama_batch, and a model of its cost."""

from __future__ import annotations

from collections import deque

import llama_cpp.llama_cpp as L


class StepCost:
    """Time of one decode step ~ base + per_token * tokens, fitted on recent steps."""

    def __init__(self, base_s: float = 0.02, per_token_s: float = 0.004) -> None:
        self.base_s = base_s
        self.per_token_s = per_token_s
        self._samples: deque[tuple[int, float]] = deque(maxlen=64)

    def add(self, n_tokens: int, dt: float) -> None:
        self._samples.append((n_tokens, dt))
        k = len(self._samples)
        if k < 4:
            return
        mean_n = sum(n for n, _ in self._samples) / k
        mean_t = sum(t for _, t in self._samples) / k
        var_n = sum((n - mean_n) ** 2 for n, _ in self._samples)
        if var_n < 1.0:  # every step the same size: only the base can be learned
            self.base_s = max(0.0, mean_t - self.per_token_s * mean_n)
            return
        cov = sum((n - mean_n) * (t - mean_t) for n, t in self._samples)
        self.per_token_s = max(1e-5, cov / var_n)
        self.base_s = max(0.0, mean_t - self.per_token_s * mean_n)

    def tokens_within(self, seconds: float) -> int:
        """How many tokens one step can hold and still take at most `seconds`."""
        return int((seconds - self.base_s) / self.per_token_s)


class Batch:
    """A reusable llama_batch with one sequence id per token."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = L.llama_batch_init(capacity, 0, 1)
        self._token = self.raw.token
        self._pos = self.raw.pos
        self._n_seq = self.raw.n_seq_id
        self._seq = self.raw.seq_id
        self._logits = self.raw.logits
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        i = self.n
        self._token[i] = token
        self._pos[i] = pos
        self._n_seq[i] = 1
        self._seq[i][0] = seq
        self._logits[i] = logits
        self.n = i + 1
        return i

    def free(self) -> None:
        L.llama_batch_free(self.raw)
