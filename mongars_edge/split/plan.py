"""Where a split model's layers live: this box's budget and each worker's offer, in proportion.

Pure arithmetic (no I/O): the model manager plans, the host child loads by the plan, and
`/health` shows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mongars_edge.split.rpc import SplitError


@dataclass(frozen=True)
class Offer:
    """Memory a worker offers for splitting: where to reach it and how much (bytes)."""

    endpoint: str
    budget_bytes: int
    name: str = ""  # who it is (a mesh peer's id), for people; the endpoint when empty

    @property
    def label(self) -> str:
        return self.name or self.endpoint


@dataclass(frozen=True)
class Placement:
    """Layers on one place: "local" or a worker, with the memory they are expected to take."""

    where: str
    endpoint: str  # "" for this box
    layers: int
    need_mb: int
    budget_mb: int


@dataclass(frozen=True)
class SplitPlan:
    """The whole split: the model's layers, this box's share first, then each worker's."""

    n_layer: int
    need_mb: int
    places: tuple[Placement, ...]

    @property
    def remote(self) -> tuple[Placement, ...]:
        return tuple(p for p in self.places if p.endpoint)

    @property
    def local(self) -> Placement:
        return self.places[0]

    @property
    def n_remote_layers(self) -> int:
        """llama.cpp's n_gpu_layers: the last layers, offloaded to the workers."""
        return sum(p.layers for p in self.remote)

    @property
    def tensor_split(self) -> tuple[float, ...]:
        """Each worker's share of the offloaded layers, in the workers' order."""
        return tuple(float(p.layers) for p in self.remote)

    def to_dict(self) -> dict[str, object]:
        return {
            "n_layer": self.n_layer,
            "need_mb": self.need_mb,
            "places": [
                {
                    "where": p.where,
                    "endpoint": p.endpoint or None,
                    "layers": p.layers,
                    "need_mb": p.need_mb,
                    "budget_mb": p.budget_mb,
                }
                for p in self.places
            ],
        }

    def summary(self) -> str:
        """One line for people: `12 layers here, 12 on box-b`."""
        return ", ".join(
            f"{p.layers} layers {'here' if not p.endpoint else 'on ' + p.where}"
            for p in self.places
        )


@dataclass(frozen=True)
class Fixed:
    """What a split needs outside its per-layer share (MiB): this box keeps the token embedding,
    the output head and its logits buffer; each worker a compute buffer for its layers."""

    host_mb: int = 0
    worker_mb: int = 0


def fixed_parts(n_embd: int, n_vocab: int, n_ubatch: int) -> Fixed:
    """The fixed parts of a model's split from its shape.

    This box: the embedding and the head (one tensor when tied), counted at one byte a weight
    (their usual Q6_K takes 0.82), and the logits buffer, n_ubatch x vocabulary x 4 B, plus
    32 MiB. A worker's compute buffer holds a few n_ubatch x n_embd activations: llama.cpp
    reserved 48 MiB for the 0.5B and 75 MiB for the 1.5B at n_ubatch 512, counted here as 24
    of them plus 16 MiB (58 and 88 MiB).
    """
    embedding = n_vocab * n_embd >> 20
    logits = n_ubatch * n_vocab * 4 >> 20
    activations = n_ubatch * n_embd * 4 * 24 >> 20
    return Fixed(host_mb=embedding + logits + 32, worker_mb=activations + 16)


def plan_split(
    model_id: str,
    n_layer: int,
    need_mb: int,
    local_mb: int,
    offers: list[Offer],
    fixed: Fixed = Fixed(),
) -> SplitPlan:
    """Place `n_layer` layers of a model needing `need_mb` in all: this box first keeps the
    fixed part (`fixed.host_mb`, within `need_mb`) and as many layers as `local_mb` then
    holds, the rest go to the workers in proportion to their offers, each offer less the
    worker's own fixed part. SplitError with the numbers when the boxes cannot hold it."""
    if n_layer < 1:
        raise SplitError(f"{model_id} has no layers to split")
    offered = [o for o in offers if o.budget_bytes > 0]
    total_mb = local_mb + sum(o.budget_bytes >> 20 for o in offered)
    wanted_mb = need_mb + fixed.worker_mb * max(1, len(offered))
    if wanted_mb > total_mb or local_mb < fixed.host_mb:
        held = " + ".join(f"{o.budget_bytes >> 20} MiB on {o.label}" for o in offered)
        why = (
            f"needs ~{wanted_mb} MiB"
            if local_mb >= fixed.host_mb
            else f"keeps ~{fixed.host_mb} MiB on this box whatever the split (its embedding, "
            "output head and logits)"
        )
        raise SplitError(
            f"{model_id} {why}; this box holds {local_mb} MiB"
            + (f" and its workers offer {held}" if held else " and no worker offers memory")
            + f" ({total_mb} MiB in all): pair a box that offers more, or choose a smaller model"
        )
    per_layer = max(0, need_mb - fixed.host_mb) / n_layer
    # This box keeps as many layers as its budget holds: the fewer cross the link, the faster.
    room = local_mb - fixed.host_mb
    local_layers = min(n_layer, math.floor(room / per_layer)) if per_layer else n_layer
    rest = n_layer - local_layers
    budgets = [max(0, (o.budget_bytes >> 20) - fixed.worker_mb) for o in offered]
    layers = _share(rest, budgets, per_layer)
    if layers is None:
        raise SplitError(
            f"{model_id}: {rest} layers of ~{per_layer:.0f} MiB each must leave this box, and "
            f"the workers' offers (less ~{fixed.worker_mb} MiB each for their compute) do not "
            "hold them whole: pair a box that offers more"
        )
    here = Placement(
        "local", "", local_layers, math.ceil(local_layers * per_layer) + fixed.host_mb, local_mb
    )
    places = [here]
    places += [
        Placement(
            o.label,
            o.endpoint,
            n,
            math.ceil(n * per_layer) + (fixed.worker_mb if n else 0),
            o.budget_bytes >> 20,
        )
        for o, n in zip(offered, layers, strict=True)
    ]
    return SplitPlan(n_layer, need_mb, tuple(places))


def _share(rest: int, budgets_mb: list[int], per_layer: float) -> list[int] | None:
    """`rest` layers over workers in proportion to their budgets, none over its budget
    (largest remainders first); None when they cannot hold them all."""
    caps = [math.floor(mb / per_layer) if per_layer else rest for mb in budgets_mb]
    total = sum(budgets_mb)
    wanted = [rest * mb / total if total else 0.0 for mb in budgets_mb]
    layers = [min(cap, math.floor(w)) for cap, w in zip(caps, wanted, strict=True)]
    by_remainder = sorted(range(len(layers)), key=lambda i: wanted[i] - layers[i], reverse=True)
    while sum(layers) < rest:
        room = [i for i in by_remainder if layers[i] < caps[i]]
        if not room:
            return None
        for i in room[: rest - sum(layers)]:
            layers[i] += 1
    return layers
