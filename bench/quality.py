"""Answer quality: the box over HTTP against the same GGUF called raw, one line per model.

    .venv/bin/python bench/quality.py [--models ID[,ID...]] [--data-dir .data] [--json]

For each model, the same simple questions in English and Québec French (facts and arithmetic)
go to:
 - the box: a real `mongars-edge serve` on loopback, through /v1/chat/completions (its persona,
   language handling and memory), each question in a new conversation;
 - raw: llama-cpp-python's `create_chat_completion` on the same GGUF, with its own chat template
   and nothing else.
Both greedy (temperature 0), at most 160 tokens. Counted per side: correct answers (an accepted
word appears), answers in the asker's language (chat.lang.detect; a bare number counts), and
recall: a fact told in one conversation, asked in a new one (raw has no memory, so it cannot).
Target: the box never scores below raw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mongars_edge.chat.lang import detect  # noqa: E402
from mongars_edge.inference.models import ModelStore  # noqa: E402

MAX_TOKENS = 160
DEFAULT_MODELS = "smollm2-135m-instruct,qwen2.5-coder-0.5b-instruct,qwen2.5-coder-1.5b-instruct"


@dataclass(frozen=True)
class Question:
    lang: str
    text: str
    accept: tuple[str, ...]  # lowercase, without accents


QUESTIONS = (
    Question("en", "What is the capital of Canada?", ("ottawa",)),
    Question("en", "How many legs does a spider have?", ("8", "eight")),
    Question("en", "What is 12 times 7?", ("84",)),
    Question("en", "Which planet is known as the red planet?", ("mars",)),
    Question("en", "What is 45 plus 38?", ("83",)),
    Question("en", "What language do most people speak in Quebec?", ("french",)),
    Question("fr", "C'est quoi la capitale du Canada?", ("ottawa",)),
    Question("fr", "Combien de jours y a-t-il dans une semaine?", ("7", "sept")),
    Question("fr", "Combien font 9 fois 8?", ("72", "soixante-douze")),
    Question("fr", "Quel est le plus grand océan du monde?", ("pacifique",)),
    Question("fr", "Combien font 100 moins 37?", ("63", "soixante-trois")),
    Question("fr", "En quelle saison la neige tombe-t-elle au Québec?", ("hiver",)),
)
# (language, what the user says in one conversation, what they ask in a new one, accepted)
RECALL = (
    ("fr", "Mon chien s'appelle Caramel.", "Comment s'appelle mon chien?", ("caramel",)),
    ("en", "My sister's name is Rosalie.", "What is my sister's name?", ("rosalie",)),
)


def plain(text: str) -> str:
    """Lowercase, accents stripped: what accepted words are matched against."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def correct(answer: str, accept: tuple[str, ...]) -> bool:
    words = plain(answer).replace("-", " ").replace(",", " ").replace(".", " ").split()
    flat = plain(answer)
    return any((a in words) if a.isdigit() else (a in flat) for a in accept)


def in_language(answer: str, lang: str) -> bool:
    found = detect(answer).lang
    return found is None or found == lang


@dataclass
class Score:
    correct: int = 0
    in_language: int = 0
    recall: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"correct {self.correct}/{len(QUESTIONS)}, in-language {self.in_language}/"
            f"{len(QUESTIONS)}, recall {self.recall}/{len(RECALL)}"
        )


def grade(score: Score, q: Question, answer: str) -> None:
    ok, lang_ok = correct(answer, q.accept), in_language(answer, q.lang)
    score.correct += ok
    score.in_language += lang_ok
    score.answers.append({"q": q.text, "a": answer, "correct": ok, "in_language": lang_ok})


# -- raw llama-cpp-python, in a child process (two llama.cpp OpenMP teams in one process slow
# each other down; see bench/inference.py) --------------------------------------------------


def _raw_worker(conn: Any, model: str, threads: int) -> None:
    from llama_cpp import Llama

    llm = Llama(model, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    conn.send("ready")
    while (text := conn.recv()) is not None:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": text}], temperature=0.0, max_tokens=MAX_TOKENS
        )
        conn.send(out["choices"][0]["message"]["content"] or "")  # type: ignore[index]
    llm.close()


def run_raw(model: Path, threads: int) -> Score:
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    proc = ctx.Process(target=_raw_worker, args=(child, str(model), threads))
    proc.start()
    score = Score()
    try:
        conn.recv()
        for q in QUESTIONS:
            conn.send(q.text)
            grade(score, q, conn.recv())
        for _lang, _told, asked, accept in RECALL:
            # A new conversation: raw has nothing else to go on.
            conn.send(asked)
            answer = conn.recv()
            score.recall += correct(answer, accept)
            score.answers.append({"q": asked, "a": answer, "recall": True})
    finally:
        conn.send(None)
        proc.join(60)
    return score


# -- the box, a real server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(data: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mongars_edge", *args, "--data-dir", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    return done.stdout


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], failure: str) -> None:
    """Until `/health` answers 200 (two minutes at most); SystemExit(failure) if the server
    process ends first."""
    for _ in range(600):
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(failure)
        time.sleep(0.2)


@contextlib.contextmanager
def serving(path: Path, threads: int, prefix: str = "bench-quality-") -> Iterator[httpx.Client]:
    """A real `mongars-edge serve` on loopback with `path` as its model, and a client for it
    holding a user's token (no mesh, no speech: one model, one box)."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    _cli(data, "users", "add", "eval", "--password-stdin", stdin="quality-bench-password\n")
    token = _cli(data, "tokens", "create", "eval").strip().split()[-1]
    port = _free_port()
    env = dict(os.environ, MONGARS_N_THREADS=str(threads), MONGARS_N_PARALLEL="1")
    log = (data / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mongars_edge",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--model",
            str(path),
            "--no-mesh",
            "--no-speech",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
            wait_healthy(client, proc, f"the box did not start; see {data / 'serve.log'}")
            yield client
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def run_box(model: str, path: Path, threads: int) -> Score:
    score = Score()
    with serving(path, threads) as client:

        def ask(text: str, lang: str) -> str:
            body = {
                "model": "mongars",
                "messages": [{"role": "user", "content": text}],
                "temperature": 0,
                "max_tokens": MAX_TOKENS,
                "conversation_id": "new",
            }
            reply = client.post(
                "/v1/chat/completions", json=body, headers={"Accept-Language": lang}
            )
            reply.raise_for_status()
            return str(reply.json()["choices"][0]["message"]["content"])

        for q in QUESTIONS:
            grade(score, q, ask(q.text, q.lang))
        for lang, told, asked, accept in RECALL:
            ask(told, lang)
            time.sleep(1.0)  # the turn is stored and its memory extracted after the reply
            answer = ask(asked, lang)
            score.recall += correct(answer, accept)
            score.answers.append({"q": asked, "a": answer, "recall": True})
    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="catalog ids or GGUF paths")
    parser.add_argument("--data-dir", default=".data", help="where pulled models are")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = ModelStore(Path(args.data_dir))
    results = []
    for spec in args.models.split(","):
        model_id, path = store.resolve(spec.strip())
        box = run_box(model_id, path, args.threads)
        raw = run_raw(path, args.threads)
        ok = (
            box.correct >= raw.correct
            and box.in_language >= raw.in_language
            and box.recall >= raw.recall
        )
        results.append({"model": model_id, "box": box.__dict__, "raw": raw.__dict__, "ok": ok})
        if not args.json:
            verdict = "box >= raw" if ok else "BOX BELOW RAW"
            print(f"{model_id}: box {box.line()} | raw {raw.line()}  [{verdict}]", flush=True)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
