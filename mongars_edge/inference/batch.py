"""The two small tools of a decode step: a reusable llama_batch, and the prompt chunk size."""

from __future__ import annotations

import llama_cpp.llama_cpp as L


class ChunkSize:
    """How many prompt tokens ride along with running streams in one step.

    Measured, not modelled: after each mixed step (streams decoding and a prompt prefilling)
    the chunk grows by half while the step stayed well under the stall target, and shrinks in
    proportion when it went over. A least-squares fit of step time was tried first: with most
    steps of 1-4 tokens its slope is noise, and one mis-fit let a 500-token chunk stall streams
    for seconds.
    """

    def __init__(self, target_s: float, *, start: int = 16, minimum: int = 8) -> None:
        self.target_s = target_s
        self.minimum = minimum
        self.tokens = start

    def learn(self, dt: float, n_prefill: int) -> None:
        """Feed the duration of a mixed step that carried `n_prefill` prompt tokens."""
        if n_prefill < self.tokens:
            return  # the prompt ran out before the chunk did: says nothing about the limit
        if dt > self.target_s:
            self.tokens = max(self.minimum, int(self.tokens * 0.9 * self.target_s / dt))
        elif dt < 0.7 * self.target_s:
            self.tokens = int(self.tokens * 1.5) + 1

    def budget(self, capacity: int) -> int:
        return max(self.minimum, min(capacity, self.tokens))


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
