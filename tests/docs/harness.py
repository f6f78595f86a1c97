"""The doc-test: every shell block of README.md and docs/*.md, run as written against a real box.

    sudo .venv/bin/python -m tests.docs.harness [README.md docs/pairing.md ...]

prints each block's result and the pass/skip counts (DOCTEST_VERBOSE=1: every block's
output). Each document runs in namespaces of its own (see tests.docs.runner), so it needs
root, as the mesh namespace tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.docs.blocks import REPO, blocks, documents


def can_run() -> str:
    """Why the doc-test cannot run here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root (network, mount and pid namespaces of its own)"
    missing = [tool for tool in ("unshare", "ip", "tmux", "curl") if shutil.which(tool) is None]
    if missing:
        return "needs " + ", ".join(missing)
    if not (REPO / ".venv" / "bin" / "mongars-edge").exists():
        return "needs the .venv (make setup-dev)"
    return ""


def runnable_documents() -> list[str]:
    return [
        str(path.relative_to(REPO))
        for path in documents()
        if any(block.lang == "sh" for block in blocks(path))
    ]


def run_document(doc: str, timeout_s: float = 1500) -> list[dict[str, Any]]:
    """Run one document's blocks in fresh namespaces; one report row per block."""
    with tempfile.TemporaryDirectory(prefix="doctest-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        unshare = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc"]
        result = subprocess.run(
            [*unshare, sys.executable, "-m", "tests.docs.runner", doc, str(work)],
            cwd=REPO,
            env={**os.environ, "MONGARS_DOCTEST_NS": "1"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        report = work / "report.json"
        if not report.exists():
            raise RuntimeError(f"the doc-test of {doc} did not finish:\n{result.stderr[-3000:]}")
        rows: list[dict[str, Any]] = json.loads(report.read_text())
        return rows


def summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(row["status"] for row in rows)
    order = ("pass", "fail", "skip", "not a command")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts[k])


def _print(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        extra = f" ({row['reason']})" if row.get("reason") else ""
        print(f"{row['status']:<14} {row['where']:<24} {row['first']}{extra}")
        if row["status"] == "fail" or (os.environ.get("DOCTEST_VERBOSE") and row.get("output")):
            print("    " + row.get("output", "").strip().replace("\n", "\n    "))


def main() -> None:
    why = can_run()
    if why:
        raise SystemExit(f"the doc-test {why}")
    docs = sys.argv[1:] or [str(path.relative_to(REPO)) for path in documents()]
    everything: list[dict[str, Any]] = []
    for doc in docs:
        if doc in runnable_documents():
            rows = run_document(doc)
        else:  # nothing to run: count its blocks without starting anything
            rows = [
                {"where": b.where, "status": "not a command", "first": b.first_line}
                for b in blocks(REPO / doc)
            ]
        _print(rows)
        print(f"== {doc}: {summary(rows)}\n")
        everything += rows
    print(f"== all documents: {summary(everything)}")


if __name__ == "__main__":
    main()
