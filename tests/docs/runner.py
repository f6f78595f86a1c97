"""Runs the shell blocks of one document as a newcomer would, against a real box.

Started by `harness.run_document` inside namespaces of its own (network, mount, pid): the
box and every box a document starts get the ports the docs name (8080, 8765, 10200), no
other process on the machine is reachable, and everything dies with this process. There,
`/var/lib` is an empty tmpfs (a command run as root without a box must not write the real
one) and `/etc/hosts` also names kitchen-box.local (the TUI doc's example host).

The box is started with the commands `make serve` runs (`make -n serve`, today
`.venv/bin/mongars-edge serve --data-dir .data --host 127.0.0.1 --port 8080`), in a scratch
checkout: links to this repository's files and `.venv`, a `.data` of its own, and the suite's
models (the 135M and tiny.en) named in its environment.
The blocks of the document then run in order in one bash session (variables, the working
directory and background jobs carry from block to block), each with `pipefail` and an ERR
trap: a block passes when no command in it failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

from tests.docs.blocks import REPO, Block, blocks

BLOCK_TIMEOUT_S: Final = 240.0
BOX_START_S: Final = 300.0
#: What `make serve` ran when this was written; the Makefile's own recipe is preferred.
_MAKE_SERVE: Final = ".venv/bin/mongars-edge serve --data-dir .data --host 127.0.0.1 --port 8080"
_HOSTS = "127.0.0.1 localhost kitchen-box.local\n::1 localhost ip6-localhost\n"


def _setup_namespace(work: Path) -> None:
    if os.environ.get("MONGARS_DOCTEST_NS") != "1":
        raise SystemExit("run through tests.docs.harness: it makes the namespaces first")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/var/lib"], check=True)
    hosts = work / "hosts"
    hosts.write_text(_HOSTS)
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGARS_", "PYTEST"))}
    env.update(
        PATH=f"{REPO / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        HOME=str(work / "home"),
        LANG="C.UTF-8",
        TERM="xterm-256color",
        # The suite's models, as everywhere in the tests: the profile's choice (the 1.5B and
        # Whisper base) cannot be downloaded inside the namespaces, and would make every
        # documented chat minutes long on CI's two cores.
        MONGARS_MODEL="smollm2-135m-instruct",
        MONGARS_STT_MODEL="tiny.en",
    )
    return env


class Box:
    """The box `make serve` would run, in the scratch checkout."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.proc: subprocess.Popen[bytes] | None = None

    def recipe(self) -> list[str]:
        """The commands of `make serve` (`make -n`: the Makefile may change what it runs,
        e.g. fetch a model first); the last one runs the box. Set-up steps (pip) are left out:
        the doc-test uses this repository's .venv as it is."""
        dry = subprocess.run(
            ["make", "-n", "serve"], cwd=self.work, env=self.env, capture_output=True, text=True
        )
        lines = [ln.strip() for ln in dry.stdout.splitlines() if "mongars-edge " in ln]
        if dry.returncode != 0 or not lines or " serve" not in lines[-1]:
            return [_MAKE_SERVE]
        return lines

    def start(self) -> None:
        if self.proc is not None:
            return
        *before, serve = self.recipe()
        log = (self.work / "box.log").open("ab")
        for step in before:
            subprocess.run(
                ["bash", "-c", step], cwd=self.work, env=self.env, stdout=log, stderr=log
            )
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {serve}"],
            cwd=self.work,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        end = time.monotonic() + BOX_START_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("the box stopped: " + self.log_tail())
            try:
                with urllib.request.urlopen("http://127.0.0.1:8080/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the box did not answer /health: " + self.log_tail())

    def log_tail(self) -> str:
        return (self.work / "box.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Shell:
    """One bash session for a document's blocks; variables carry over in a state file."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.dir = work / ".doctest"
        self.dir.mkdir(exist_ok=True)
        self.state = self.dir / "state.sh"
        self.state.touch()
        self.count = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.work,
            env=self.env,
            text=True,
            start_new_session=True,
        )
        assert proc.stdin is not None
        baseline = self.dir / "baseline"
        proc.stdin.write(f"set -o pipefail\ncompgen -v > {baseline}\nsource {self.state}\n")
        proc.stdin.flush()
        return proc

    def run(self, text: str, timeout_s: float = BLOCK_TIMEOUT_S) -> tuple[bool, str]:
        self.count += 1
        n = self.count
        script = self.dir / f"block{n}.sh"
        script.write_text(text)
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if syntax.returncode != 0:
            return False, syntax.stderr
        out, done = self.dir / f"out{n}", self.dir / f"done{n}"
        trap = '__fail=$?; echo "doctest: exit status $__fail from: $BASH_COMMAND" >&2'
        assert self.proc.stdin is not None
        self.proc.stdin.write(
            f"__fail=0\n{{\ntrap '{trap}' ERR\n{text}\ntrap - ERR\n}} < /dev/null > {out} 2>&1\n"
            f"{{ compgen -v | grep -vxFf {self.dir / 'baseline'} | grep -v '^__' | "
            f'while read -r v; do declare -p "$v" 2>/dev/null; done; }} > {self.state}\n'
            f'echo "$__fail" > {done}\n'
        )
        self.proc.stdin.flush()
        end = time.monotonic() + timeout_s
        while not done.exists():
            if time.monotonic() > end or self.proc.poll() is not None:
                self.restart()
                return False, _read(out) + f"\ndoctest: no end after {timeout_s:.0f} s"
            time.sleep(0.1)
        return done.read_text().strip() == "0", _read(out)

    def restart(self) -> None:
        self.close()
        self.proc = self._spawn()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tui_line(shell: Shell, line: str, n: int) -> tuple[bool, str]:
    """Open the TUI as the line says under tmux, check its token works, quit with Ctrl+Q."""
    script = shell.dir / f"tui{n}.sh"
    status = shell.dir / f"tui{n}.status"
    script.write_text(f"source {shell.state}\n{line}\necho $? > {status}\n")
    tmux = ["tmux", "-L", f"doctest{os.getpid()}", "-f", "/dev/null"]
    session = ["new-session", "-d", "-s", "doc", "-x", "100", "-y", "30", "-c", str(shell.work)]
    subprocess.run(
        [*tmux, *session, "bash", "--noprofile", "--norc", str(script)],
        env=shell.env,
        check=True,
    )

    def screen() -> str:
        shown = subprocess.run([*tmux, "capture-pane", "-p", "-t", "doc"], capture_output=True)
        return shown.stdout.decode(errors="replace")

    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and "Quit" not in screen():
            if status.exists():
                return False, "the TUI ended at once:\n" + screen()
            time.sleep(0.3)
        # The Memory screen lists with the token: "N memories in total" only when it works.
        subprocess.run([*tmux, "send-keys", "-t", "doc", "F2"], check=False)
        end = time.monotonic() + 30
        while time.monotonic() < end and not any(w in screen() for w in ("in total", "Cannot")):
            time.sleep(0.3)
        seen = screen()
        bad = [w for w in ("unreachable", "refused", "Cannot", "Traceback") if w in seen]
        bad += [] if "in total" in seen else ["no memory list"]
        subprocess.run([*tmux, "send-keys", "-t", "doc", "C-q"], check=False)
        end = time.monotonic() + 30
        while time.monotonic() < end and not status.exists():
            time.sleep(0.2)
        code = _read(status).strip()
        ok = not bad and code == "0" and "Quit" in seen
        return ok, f"{line}\n(screen; exit status {code or '?'})\n{seen}"
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)


def run(doc: str, work: Path) -> list[dict[str, Any]]:
    env = _env(work)
    (work / "home").mkdir(exist_ok=True)
    # A checkout as the README assumes one (the Makefile, tests/fixtures, bench/, .venv),
    # without its data: `.data` is the box's own, made here.
    for entry in REPO.iterdir():
        if entry.name == ".venv" or not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    box = Box(work, env)
    shell = Shell(work, env)
    report: list[dict[str, Any]] = []
    try:
        for block in blocks(REPO / doc):
            report.append(_one(block, box, shell))
    finally:
        shell.close()
        box.stop()
    return report


def _one(block: Block, box: Box, shell: Shell) -> dict[str, Any]:
    row: dict[str, Any] = {"where": block.where, "first": block.first_line}
    if block.lang != "sh":
        return row | {"status": "not a command"}
    if block.skip_reason:
        return row | {"status": "skip", "reason": block.skip_reason}
    try:
        box.start()
    except RuntimeError as exc:
        return row | {"status": "fail", "output": str(exc)}
    if block.tui:
        outputs: list[str] = []
        ok = True
        for n, line in enumerate(block.text.splitlines()):
            if line.strip() and not line.lstrip().startswith("#"):
                passed, output = _tui_line(shell, line, shell.count * 100 + n)
                ok, outputs = ok and passed, [*outputs, output]
        return row | {"status": "pass" if ok else "fail", "output": "\n".join(outputs)}
    passed, output = shell.run(block.text)
    return row | {"status": "pass" if passed else "fail", "output": output[-4000:]}


def main() -> None:
    doc, work = sys.argv[1], Path(sys.argv[2])
    _setup_namespace(work)
    report = run(doc, work)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    shutil.rmtree(work / ".doctest", ignore_errors=True)


if __name__ == "__main__":
    main()
