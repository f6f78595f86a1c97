"""Four real `serve` boxes in network namespaces: discovery, pairing, load sharing, failover,
adapter sharing, and an unpaired box that gets no work and can inject nothing.

Each box is a real process with the real SmolLM2 model, one inference thread and one slot, so
"saturated" needs only a couple of requests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.inference.gen_models import build_all
from tests.integration.netns import HTTP_PORT, MESH_PORT, Box, Lab, can_use_netns

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(bool(can_use_netns()), reason=can_use_netns() or "ok"),
    pytest.mark.timeout(600),
]

CLIENT = Path(__file__).with_name("chat_client.py")
QUESTION = "Explain in a few sentences why the sky is blue."
MODEL = "smollm2-135m-instruct"


def body(max_tokens: int, adapter: str | None = None, question: str = QUESTION) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "memory": False,
    }
    if adapter:
        out["adapter"] = adapter
    return out


def chat_args(box: Box, bodies: list[dict[str, Any]]) -> list[str]:
    return box.exec_args(
        sys.executable,
        str(CLIENT),
        f"http://{box.address}:{HTTP_PORT}/v1/chat/completions",
        str(box.data_dir / "local-admin.token"),
        json.dumps(bodies),
    )


def chat(box: Box, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = subprocess.run(
        chat_args(box, bodies), capture_output=True, text=True, timeout=300, check=False
    )
    replies = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(replies) == len(bodies), out.stderr
    return replies


def served(box: Box) -> int:
    return int(box.state().get("served", 0))


def linked(box: Box, other: Box) -> bool:
    other_id = other.state().get("node_id")
    return any(p["node_id"] == other_id and p["linked"] for p in box.state().get("peers", []))


def pair(member: Box, joiner: Box) -> None:
    proc = subprocess.Popen(
        member.exec_args(
            sys.executable,
            "-m",
            "mongars_edge",
            "pair",
            "--data-dir",
            str(member.data_dir),
            "--ttl",
            "120",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("pairing code: "), line
    code = line.split()[-1]
    joined = joiner.cli("pair", "--join", code)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


@dataclass
class Mesh:
    lab: Lab
    a: Box
    b: Box
    c: Box
    d: Box
    ref: dict[str, str]
    survivor: Box | None = None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    lora = build_all()["smollm2_lora_a"]
    root = tmp_path_factory.mktemp("netns")
    with Lab(root, ["a", "b", "c", "d"]) as lab:
        boxes = lab.boxes
        for box in boxes.values():
            box.start()
        a, b, c, d = boxes["a"], boxes["b"], boxes["c"], boxes["d"]
        lab.wait("every box serving", lambda: all(x.state() for x in boxes.values()), 180)
        added = a.cli("adapters", "add", str(lora), "--name", "lora-a")
        assert added.returncode == 0, added.stdout + added.stderr
        # References: greedy answers computed on A alone, before anyone is paired.
        short, long_, adapted = (
            chat(a, [body(48)]) + chat(a, [body(120)]) + chat(a, [body(48, "lora-a")])
        )
        for reply in (short, long_, adapted):
            assert "text" in reply, reply
        assert adapted["text"] != short["text"]
        ref = {"short": short["text"], "long": long_["text"], "adapted": adapted["text"]}
        yield Mesh(lab, a, b, c, d, ref)


def test_boxes_discover_each_other_and_pair(mesh: Mesh) -> None:
    a, b, c, d = mesh.a, mesh.b, mesh.c, mesh.d

    def everyone_sees_everyone() -> bool:
        return all(len(x.state().get("peers", [])) >= 3 for x in (a, b, c, d))

    mesh.lab.wait("mDNS discovery", everyone_sees_everyone, 60)
    assert all("not paired" in p["why"] for p in a.state()["peers"])
    pair(a, b)
    pair(a, c)
    mesh.lab.wait("links a-b, a-c, b-c", lambda: linked(a, b) and linked(a, c) and linked(b, c))
    rows = {p["node_id"]: p for p in a.state()["peers"]}
    assert "not paired" in rows[d.state()["node_id"]]["why"]
    assert rows[b.state()["node_id"]]["why"].startswith("used")
    peers_out = a.cli("peers")
    assert "not paired" in peers_out.stdout and "used" in peers_out.stdout


def test_saturated_box_runs_requests_on_its_peers(mesh: Mesh) -> None:
    a, b, c, d = mesh.a, mesh.b, mesh.c, mesh.d
    before = served(b), served(c)
    replies = chat(a, [body(48) for _ in range(6)])
    assert [r.get("text") for r in replies] == [mesh.ref["short"]] * 6, replies
    mesh.lab.wait("state written", lambda: served(b) > before[0] and served(c) > before[1], 10)
    assert served(d) == 0


def test_killing_a_peer_mid_stream_still_completes_identical_answers(mesh: Mesh) -> None:
    a, b, c = mesh.a, mesh.b, mesh.c
    before = {b.name: served(b), c.name: served(c)}
    bodies = [body(120) for _ in range(4)]
    proc = subprocess.Popen(chat_args(a, bodies), stdout=subprocess.PIPE, text=True)
    # Kill whichever peer A sent work to first (B unless the router preferred C).
    mesh.lab.wait("a peer serving", lambda: any(served(x) > before[x.name] for x in (b, c)), 60)
    victim = b if served(b) > before[b.name] else c
    victim.kill()
    mesh.survivor = c if victim is b else b
    out, _ = proc.communicate(timeout=300)
    replies = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r.get("text") for r in replies] == [mesh.ref["long"]] * 4, replies
    assert "continuing locally" in a.log()


def test_adapter_added_on_a_is_used_by_a_request_running_on_c(mesh: Mesh) -> None:
    a, c = mesh.a, mesh.survivor or mesh.c  # C, or B if the failover test had to kill C
    before = served(c)
    sha = json.loads(a.cli("adapters", "list", "--json").stdout)[0]["sha256"]
    assert not (c.data_dir / "adapters" / f"{sha}.gguf").exists()
    # Two requests at once (one runs on C): fresh measured rates for both boxes.
    chat(a, [body(24), body(24)])
    # A long story that stays on A: with the adapter only A holds, C would first have to fetch
    # it (the router counts that), so A runs it. Without it the two idle boxes of equal speed
    # were a coin toss, and a story sent to C left A idle for the request below.
    story = [body(200, "lora-a", question="Tell a long story.")]
    busy = subprocess.Popen(chat_args(a, story), stdout=subprocess.PIPE, text=True)
    time.sleep(1.5)  # A is now busy with its one slot: the adapter request goes to C
    (reply,) = chat(a, [body(48, "lora-a")])
    busy.communicate(timeout=300)
    assert reply.get("text") == mesh.ref["adapted"], reply
    mesh.lab.wait("C's state", lambda: served(c) > before, 10)
    assert (c.data_dir / "adapters" / f"{sha}.gguf").is_file()


def test_unpaired_box_gets_no_work_and_can_inject_nothing(mesh: Mesh) -> None:
    a, d = mesh.a, mesh.d
    assert served(d) == 0
    probe = f"""
import asyncio, sys
sys.path.insert(0, {str(Path.cwd())!r})
from pathlib import Path
from mongars_edge.mesh import codec
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.transport import dial
from mongars_edge.mesh import pairing

me = Identity.load_or_create(Path({str(d.data_dir)!r}))

async def main():
    try:
        await dial({a.address!r}, {MESH_PORT}, me, lambda n: me.verify_key)
        print("LINKED")
    except Exception as exc:
        print("refused:", exc)
    try:
        await pairing.join({a.address!r}, {MESH_PORT}, "1234-5678", me, Path("/tmp/none"), "d")
        print("JOINED")
    except Exception as exc:
        print("refused:", exc)
    r, w = await asyncio.open_connection({a.address!r}, {MESH_PORT})
    msg = codec.InferRequest(1, [("user", "hi")], codec.WireSampling(), None, None, None, "", "x")
    w.write(codec.frame(codec.encode(msg)))
    await w.drain()
    print("closed" if await r.read() == b"" else "ANSWERED")
    w.close()

asyncio.run(main())
"""
    out = d.run(sys.executable, "-c", probe)
    assert "LINKED" not in out.stdout and "JOINED" not in out.stdout, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "not paired" in lines[0] and "no pairing window" in lines[1], out.stdout + out.stderr
    assert "closed" in out.stdout
    assert a.proc is not None and a.proc.poll() is None
    (reply,) = chat(a, [body(48)])
    assert reply.get("finish") in ("stop", "length") and reply.get("text"), reply
    assert d.state()["node_id"] not in a.state()["members"]
