"""Tool calls for home control: the box against llama.cpp's own server, same model and prompts.

    .venv/bin/python bench/tools.py [--model ID|GGUF] [--data-dir .data] [--json]

A fixed set of requests in English and Québec French, in Home Assistant's style (its system
prompt listing the devices, its intent tools): turn on, turn off, brightness, a question that
needs no tool, and the answer after a tool result. Each goes, greedy, to:
 - the box: a real `mongars-edge serve` on loopback, /v1/chat/completions with `tools`;
 - `llama-server --jinja` (its own tool-call parsing) on the same GGUF.
A case is right when the expected tool is called with the expected arguments, or, where no
tool is wanted, when the answer is text (with the expected word, if any) and calls nothing.
Targets: the box >= llama-server, and >= 90% on the default model.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from inference import find_server  # noqa: E402
from quality import _free_port, serving, wait_healthy  # noqa: E402

from mongars_edge.inference.models import ModelStore  # noqa: E402

MAX_TOKENS = 128

SYSTEM = """You are a voice assistant for Home Assistant.
Answer questions about the world truthfully.
Answer in plain text. Keep it simple and to the point.
When controlling Home Assistant always call the intent tools. When controlling a device, prefer \
passing just name and domain. When controlling an area, prefer passing just area name and domain.
An overview of the areas and the devices in this smart home:
```yaml
- names: Kitchen Light
  domain: light
  state: 'off'
  areas: Kitchen
- names: Living Room Lamp
  domain: light
  state: 'on'
  areas: Living Room
- names: Bedroom Light
  domain: light
  state: 'on'
  areas: Bedroom
- names: Garage Door
  domain: cover
  state: closed
  areas: Garage
```"""

_TARGET = {
    "name": {"type": "string"},
    "area": {"type": "string"},
    "domain": {"type": "array", "items": {"type": "string"}},
}


def _tool(name: str, description: str, **extra: Any) -> dict[str, Any]:
    params = {"type": "object", "properties": {**_TARGET, **extra}}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": params},
    }


TOOLS = [
    _tool("HassTurnOn", "Turns on/opens/presses a device or entity"),
    _tool("HassTurnOff", "Turns off/closes a device or entity"),
    _tool(
        "HassLightSet",
        "Sets the brightness or color of a light",
        brightness={"type": "integer", "minimum": 0, "maximum": 100},
        color={"type": "string"},
    ),
    {
        "type": "function",
        "function": {
            "name": "GetLiveContext",
            "description": "Provides real-time information about the CURRENT state of devices",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


def plain(text: str) -> str:
    return "".join(
        c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn"
    )


@dataclass(frozen=True)
class Case:
    lang: str
    messages: tuple[dict[str, Any], ...]
    check: Callable[[dict[str, Any]], bool]
    what: str


def _calls(message: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for call in message.get("tool_calls") or []:
        try:
            args = json.loads(call["function"]["arguments"] or "{}")
        except (ValueError, TypeError):
            args = {}
        out.append((call["function"]["name"], args if isinstance(args, dict) else {}))
    return out


def calls(tool: str, word: str, **want: Any) -> Callable[[dict[str, Any]], bool]:
    """Right when exactly `tool` is called (once or more, nothing else) naming `word` in its
    name or area, with the `want` arguments."""

    def check(message: dict[str, Any]) -> bool:
        made = _calls(message)
        if not made or any(name != tool for name, _ in made):
            return False
        _, args = made[0]
        target = plain(f"{args.get('name', '')} {args.get('area', '')}")
        return word in target and all(args.get(k) == v for k, v in want.items())

    return check


def says(*words: str) -> Callable[[dict[str, Any]], bool]:
    """Right when the answer is text, calls nothing, and (if words are given) has one of them."""

    def check(message: dict[str, Any]) -> bool:
        text = plain(message.get("content") or "").strip()
        if _calls(message) or not text or text.startswith(("{", "[", "<", "`")):
            return False
        return not words or any(w in text for w in words)

    return check


def _user(text: str) -> tuple[dict[str, Any], ...]:
    return ({"role": "system", "content": SYSTEM}, {"role": "user", "content": text})


def _after(text: str, tool: str, args: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    function = {"name": tool, "arguments": json.dumps(args)}
    call = {"id": "call_0", "type": "function", "function": function}
    result = {"success": True, "targets": [args.get("name", "")]}
    return (
        *_user(text),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": json.dumps(result)},
    )


CASES = (
    Case("en", _user("Turn on the kitchen light"), calls("HassTurnOn", "kitchen"), "turn on"),
    Case("en", _user("Turn off the living room lamp"), calls("HassTurnOff", "living"), "turn off"),
    Case(
        "en",
        _user("Set the bedroom light to 40%"),
        calls("HassLightSet", "bedroom", brightness=40),
        "brightness",
    ),
    Case("en", _user("What is the capital of Canada?"), says("ottawa"), "no tool"),
    Case(
        "en",
        _after("Turn on the kitchen light", "HassTurnOn", {"name": "Kitchen Light"}),
        says(),
        "after a result",
    ),
    Case("fr", _user("Allume la lumière de la cuisine"), calls("HassTurnOn", "kitchen"), "turn on"),
    Case("fr", _user("Éteins la lampe du salon"), calls("HassTurnOff", "living"), "turn off"),
    Case(
        "fr",
        _user("Mets la lumière de la chambre à 40 %"),
        calls("HassLightSet", "bedroom", brightness=40),
        "brightness",
    ),
    Case("fr", _user("C'est quoi la capitale du Canada?"), says("ottawa"), "no tool"),
    Case(
        "fr",
        _after("Allume la lumière de la cuisine", "HassTurnOn", {"name": "Kitchen Light"}),
        says(),
        "after a result",
    ),
)


def run(client: httpx.Client, model: str, extra: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for case in CASES:
        body = {
            "model": model,
            "messages": list(case.messages),
            "tools": TOOLS,
            "temperature": 0,
            "max_tokens": MAX_TOKENS,
            **extra,
        }
        started = time.perf_counter()
        reply = client.post("/v1/chat/completions", json=body)
        seconds = time.perf_counter() - started
        if reply.status_code != 200:
            rows.append({"case": case.what, "lang": case.lang, "ok": False, "error": reply.text})
            continue
        message = reply.json()["choices"][0]["message"]
        rows.append(
            {
                "case": case.what,
                "lang": case.lang,
                "ok": case.check(message),
                "content": message.get("content"),
                "tool_calls": _calls(message),
                "seconds": round(seconds, 2),
            }
        )
    return rows


@contextlib.contextmanager
def llama_server(binary: str, model: Path, threads: int) -> Iterator[httpx.Client]:
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-tools-llama-server.log"
    argv = [binary, "-m", str(model), "--jinja", "-t", str(threads), "-c", "4096"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            wait_healthy(client, proc, f"llama-server did not start; see {log}")
            yield client
    finally:
        proc.terminate()
        proc.wait(30)


def score(rows: list[dict[str, Any]]) -> str:
    right = sum(r["ok"] for r in rows)
    by_lang = {
        lang: f"{sum(r['ok'] for r in rows if r['lang'] == lang)}/"
        f"{sum(1 for r in rows if r['lang'] == lang)}"
        for lang in ("en", "fr")
    }
    share = f"{100 * right / len(rows):.0f}%"
    return f"{right}/{len(rows)} ({share}; en {by_lang['en']}, fr {by_lang['fr']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    parser.add_argument("--data-dir", default=".data", help="where pulled models are")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--llama-server", help="path to a llama-server binary")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    model_id, path = ModelStore(Path(args.data_dir)).resolve(args.model)
    with serving(path, args.threads, prefix="bench-tools-") as client:
        box = run(client, "mongars", {"conversation_id": "new"})
    binary = find_server(args.llama_server)
    server = None
    if binary is not None:
        with llama_server(binary, path, args.threads) as client:
            server = run(client, model_id, {})
    result = {"model": model_id, "box": box, "llama_server": server}
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return
    for name, rows in (("box", box), ("llama-server --jinja", server)):
        if rows is None:
            print(f"{name}: not measured (no llama-server; see docs/inference.md to build it)")
            continue
        print(f"{model_id} {name}: {score(rows)}")
        for r in rows:
            mark = "ok " if r["ok"] else "BAD"
            got = r.get("tool_calls") or r.get("content") or r.get("error")
            print(f"   {mark} {r['lang']} {r['case']:<15} {str(got)[:90]}")
    if server is not None:
        box_right, server_right = sum(r["ok"] for r in box), sum(r["ok"] for r in server)
        verdict = "box >= llama-server" if box_right >= server_right else "BOX BELOW LLAMA-SERVER"
        print(f"{verdict}; target >= 90% on the default model")


if __name__ == "__main__":
    main()
