"""Two real boxes holding different models, in network namespaces: each box's /v1/models lists
the mesh's models, and a request for the model only the other box holds is answered there."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.inference.gen_models import build_all
from tests.integration.netns import HTTP_PORT, Box, Lab, can_use_netns
from tests.integration.test_mesh_netns import chat, linked, pair, served

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(can_use_netns()), reason=can_use_netns() or "ok"),
    pytest.mark.timeout(600),
]

SMOL = "smollm2-135m-instruct"


@dataclass
class Two:
    a: Box
    b: Box
    b_model: str


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Two]:
    tiny = build_all()["tiny"]  # a different model: random weights, a real tokenizer
    root = tmp_path_factory.mktemp("netns-models")
    with Lab(root, ["a", "b"]) as lab:
        a, b = lab.boxes["a"], lab.boxes["b"]
        a.extra_env = {"MONGARS_MODEL": SMOL}
        b.extra_env = {"MONGARS_MODEL": str(tiny)}
        a.start()
        b.start()
        lab.wait("both boxes serving", lambda: bool(a.state() and b.state()), 180)
        # `pair --join` without an address joins a box the joiner's daemon has seen.
        lab.wait("mDNS discovery", lambda: bool(b.state().get("peers")), 60)
        pair(a, b)
        lab.wait("the boxes linked", lambda: linked(a, b) and linked(b, a), 60)
        yield Two(a, b, Path(tiny).stem)


def _until(check: Callable[[], bool], timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def _get(box: Box, path: str) -> dict[str, Any]:
    token = (box.data_dir / "local-admin.token").read_text().strip()
    out = box.run(
        "python3",
        "-c",
        "import sys, urllib.request; req = urllib.request.Request(sys.argv[1], "
        "headers={'Authorization': 'Bearer ' + sys.argv[2]}); "
        "print(urllib.request.urlopen(req, timeout=10).read().decode())",
        f"http://{box.address}:{HTTP_PORT}{path}",
        token,
    )
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _models(box: Box) -> dict[str, dict[str, Any]]:
    return {card["id"]: card for card in _get(box, "/v1/models")["data"]}


def test_each_box_lists_the_models_of_the_mesh(two: Two) -> None:
    b_id = two.b.state()["node_id"]
    a_id = two.a.state()["node_id"]
    on_a = _models(two.a)
    assert on_a[SMOL]["where"] == [""] and on_a[SMOL]["loaded"] is True
    assert on_a[two.b_model]["where"] == [b_id]
    on_b = _models(two.b)
    assert on_b[SMOL]["where"] == [a_id]


def test_a_request_for_the_peers_model_is_answered_by_the_peer(two: Two) -> None:
    before = served(two.b)
    reply = chat(
        two.a,
        [
            {
                "model": two.b_model,
                "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": 8,
                "temperature": 0,
                "memory": False,
            }
        ],
    )[0]
    assert "text" in reply, reply
    assert reply["model"] == two.b_model
    _until(lambda: served(two.b) == before + 1)  # state.json is written every second or so
    # Its own model stays on A.
    mine = chat(two.a, [{"model": SMOL, "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 4, "temperature": 0, "memory": False}])[0]  # fmt: skip
    assert "text" in mine
    time.sleep(2)
    assert served(two.b) == before + 1


def test_a_model_nobody_holds_is_a_404_naming_what_is_there(two: Two) -> None:
    token = (two.a.data_dir / "local-admin.token").read_text().strip()
    script = (
        "import json, sys, urllib.request, urllib.error\n"
        "req = urllib.request.Request(sys.argv[1], data=sys.argv[3].encode(), headers={"
        "'Authorization': 'Bearer ' + sys.argv[2], 'Content-Type': 'application/json'})\n"
        "try:\n    urllib.request.urlopen(req, timeout=30)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
    )
    body = {"model": "llama-9000", "messages": [{"role": "user", "content": "Hi"}]}
    out = two.a.run(
        "python3",
        "-c",
        script,
        f"http://{two.a.address}:{HTTP_PORT}/v1/chat/completions",
        token,
        json.dumps(body),
    )
    status, _, text = out.stdout.partition(" ")
    assert status == "404", out.stdout + out.stderr
    message = json.loads(text)["error"]["message"]
    assert "llama-9000" in message and SMOL in message and two.b_model in message
