"""The two small tools of a decode step: a reusable llama_batch, and the prompt chunk size."""

from __future__ import annotations

import llama_cpp.llama_cpp as L


class ChunkSize:
    """How many prompt tokens ride along with running streams in one step.

    Measured, not modelled: after each mixed step (streams decoding and a prompt prefilling)
    the chunk grows by half while the step stayed well under the stall target, and shrinks when
    it went over, to what the room left by the decoders' own step (`base_s`, measured on steps
    without a prompt) holds at the cost per prompt token just seen; growth stops at that same
    bound. A least-squares fit of step time was tried first: with most steps of 1-4 tokens its
    slope is noise, and one mis-fit let a 500-token chunk stall streams for seconds. It starts
    small: on a 1.5B model three streams' step alone takes ~150 ms on 2 cores, and one 16-token
    chunk doubled it.
    """

    def __init__(self, target_s: float, *, start: int = 4, minimum: int = 1) -> None:
        self.target_s = target_s
        self.minimum = minimum
        self.tokens = start

    def learn(self, dt: float, n_prefill: int, base_s: float = 0.0) -> None:
        """Feed the duration of a mixed step that carried `n_prefill` prompt tokens; `base_s`
        is the recent duration of a step of the same decoders alone (0: unknown)."""
        if n_prefill < self.tokens:
            return  # the prompt ran out before the chunk did: says nothing about the limit
        if dt > self.target_s:
            if 0 < base_s < dt:
                per_token = (dt - base_s) / n_prefill
                room = max(0.0, self.target_s - base_s)
                self.tokens = max(self.minimum, int(0.9 * room / per_token))
            else:
                self.tokens = max(self.minimum, int(self.tokens * 0.9 * self.target_s / dt))
        elif dt < 0.7 * self.target_s:
            grown = int(self.tokens * 1.5) + 1
            if 0 < base_s < dt:
                # never past what the room holds at the cost just seen: a blind 1.5x from a
                # step at 0.69 of the target lands over it (the 1.5B's 314 ms gaps)
                per_token = (dt - base_s) / n_prefill
                fits = int(0.9 * max(0.0, self.target_s - base_s) / per_token)
                grown = max(self.tokens, min(grown, fits))
            self.tokens = grown

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
