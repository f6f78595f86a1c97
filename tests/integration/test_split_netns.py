"""A model split across two real `serve` boxes through the mesh, in network namespaces: box B
offers memory (`split_offer_mb`), box A's `model_budget_mb` is below what the 135M needs (so
below even the tiny model: nothing answers on A until it splits); once paired, A runs the
model split across B through the encrypted tunnel and answers as a box holding it whole does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.inference.gen_models import build_all
from tests.integration.netns import HTTP_PORT, Box, Lab, can_use_netns
from tests.integration.test_mesh_netns import body, chat, linked, pair, served

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(can_use_netns()), reason=can_use_netns() or "ok"),
    pytest.mark.timeout(600),
]


def _health(box: Box) -> dict[str, Any]:
    out = box.run(
        "python3",
        "-c",
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
        f"http://{box.address}:{HTTP_PORT}/health",
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_a_box_over_its_budget_serves_split_across_a_paired_box(tmp_path: Path) -> None:
    tiny = build_all()["tiny"]  # B's own model: another one, so A's requests are never B's
    with Lab(tmp_path, ["a", "b", "c"]) as lab:
        a, b, c = lab.boxes["a"], lab.boxes["b"], lab.boxes["c"]
        # Plain CPU kernels on A and C, as B's worker runs (repacked ones, on an Arm board,
        # round differently): the split computes every layer as C does.
        plain = {"MONGARS_CPU_REPACK": "false"}
        # The 135M needs ~485 MiB; ~155 of them stay on A whatever the split (embedding, head).
        a.extra_env = {"MONGARS_MODEL_BUDGET_MB": "250", **plain}
        c.extra_env = plain
        b.extra_env = {"MONGARS_MODEL": str(tiny), "MONGARS_SPLIT_OFFER_MB": "400"}
        for box in (a, b, c):
            box.start()
        lab.wait("every box serving", lambda: all(x.state() for x in (a, b, c)), 180)
        (reference,) = chat(c, [body(24)])  # C holds the whole model, unconstrained
        assert "text" in reference, reference

        health = _health(a)
        assert health["model"] is None and health["split"] is None
        assert any("no model answers meanwhile" in p for p in health["problems"]), health
        (refused,) = chat(a, [body(8)])
        assert "error" in refused, refused

        lab.wait("mDNS discovery", lambda: bool(b.state().get("peers")), 60)
        pair(a, b)
        lab.wait("A and B linked", lambda: linked(a, b) and linked(b, a), 60)
        # A tries its model split every 30 s: B's offer reaches it with B's telemetry.
        lab.wait(
            "A's model split across B",
            lambda: (_health(a).get("split") or {}).get("state") == "serving",
            180,
        )
        (reply,) = chat(a, [body(24)])
        assert reply.get("text") == reference["text"], reply
        split = _health(a)["split"]
        here, there = split["places"]
        assert here["where"] == "local" and here["budget_mb"] == 250
        assert there["where"] == b.state()["node_id"]  # reached through the tunnel, by id
        assert there["endpoint"].startswith("127.0.0.1:")
        assert here["layers"] + there["layers"] == split["n_layer"]
        assert served(b) == 0  # the answer was A's own, its layers partly on B
        # C was never paired: it sees no offer and holds its model whole.
        assert _health(c)["split"] is None
