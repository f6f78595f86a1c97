"""The fenced blocks of README.md and docs/*.md, and what the doc-test does with each (pure).

A block fenced with ```sh is a command someone is told to type: it runs, unless an HTML
comment right before it says why it cannot run here:

    <!-- doctest: skip (needs a Raspberry Pi) -->

`<!-- doctest: tui -->` runs each line of the block as a full-screen TUI under tmux. Other
blocks (json, python, text: output, synopses) are not commands and are only counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*doctest:\s*(.*?)\s*-->$")
# A line in an unlabelled block that someone would type: such a block must say what it is.
_COMMAND_LINE = re.compile(r"^(\$ |sudo |make |curl |\.venv/|mongars-edge |echo .*\| )")


@dataclass(frozen=True)
class Block:
    doc: str  # path from the repository root, e.g. "docs/pairing.md"
    line: int  # line of the opening fence
    lang: str
    text: str
    marker: str = ""  # the doctest comment before it, if any

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang == "sh" and not self.skip_reason

    @property
    def tui(self) -> bool:
        return self.marker == "tui"

    @property
    def skip_reason(self) -> str:
        found = re.fullmatch(r"skip \((.+)\)", self.marker)
        return found.group(1) if found else ""

    @property
    def first_line(self) -> str:
        return next((line for line in self.text.splitlines() if line.strip()), "")[:90]

    def looks_like_commands(self) -> bool:
        return any(_COMMAND_LINE.match(line.strip()) for line in self.text.splitlines())


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of one document, in order."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = str(path.relative_to(REPO))
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang = opening.groups()
        marker = ""
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (found := _MARKER.match(lines[j].strip())):
            marker = found.group(1)
        body: list[str] = []
        k = i + 1
        while k < len(lines) and not re.match(rf"^{indent}```\s*$", lines[k]):
            body.append(lines[k][len(indent) :] if lines[k].startswith(indent) else lines[k])
            k += 1
        out.append(Block(doc, i + 1, lang, "\n".join(body) + "\n", marker))
        i = k + 1
    return out


def all_blocks() -> list[Block]:
    return [block for path in documents() for block in blocks(path)]
