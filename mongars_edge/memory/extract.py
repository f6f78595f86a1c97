"""Memory extraction: what a user states about themselves becomes a memory.

Two passes. Rules catch explicit statements ("je m'appelle…", "my name is…", "I prefer…",
"j'aime…") at once, deterministically, in French and English: a 135M model misses many of
them. The local model then reads the message when the box is idle (see consolidate.py) and may
add what the rules missed; a line it writes is kept only if its content words come from the
user's own message, so the model cannot put words in the user's mouth.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

# The local model, whatever engine serves it: prompt in, text out.
Generate = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class Candidate:
    text: str
    kind: str  # "fact" or "preference"
    importance: float


_NAME: Final = r"(?P<v>[^\W\d_][\w'’\- ]{0,40})"
_REST: Final = r"(?P<v>[^.!?;\n]{2,160})"
# (pattern, kind, importance). Each pattern starts a clause; the value runs to the clause end.
_RULES: Final[tuple[tuple[str, str, float], ...]] = (
    (rf"\bje m['’]appelle\s+{_NAME}", "fact", 0.9),
    (rf"\bmon (?:pr[ée]nom|nom) (?:est|c['’]est)\s+{_NAME}", "fact", 0.9),
    (rf"\bappelle[- ]moi\s+{_NAME}", "fact", 0.9),
    (rf"\bmy name is\s+{_NAME}", "fact", 0.9),
    (rf"\bcall me\s+{_NAME}", "fact", 0.9),
    (rf"\bje suis allergique (?:à|a|aux|au)\s+{_REST}", "fact", 0.9),
    (rf"\bi(?:['’]m| am) allergic to\s+{_REST}", "fact", 0.9),
    (rf"\bj['’]habite (?:à|a|au|en|dans)\s+{_REST}", "fact", 0.7),
    (rf"\bje vis (?:à|a|au|en)\s+{_REST}", "fact", 0.7),
    (rf"\bi live in\s+{_REST}", "fact", 0.7),
    (rf"\bje travaille (?:comme|chez|à|a|au|pour|dans)\s+{_REST}", "fact", 0.7),
    (rf"\bi work (?:as|at|for|in)\s+{_REST}", "fact", 0.7),
    (rf"\bmy birthday is\s+{_REST}", "fact", 0.8),
    (rf"\bmon anniversaire est\s+{_REST}", "fact", 0.8),
    (rf"\bje pr[ée]f[èe]re\s+{_REST}", "preference", 0.6),
    (rf"\bj['’](?:aime|adore)\s+{_REST}", "preference", 0.6),
    (rf"\bje n['’]aime pas\s+{_REST}", "preference", 0.6),
    (rf"\bje d[ée]teste\s+{_REST}", "preference", 0.6),
    (rf"\bi (?:really )?prefer\s+{_REST}", "preference", 0.6),
    (rf"\bi (?:really )?(?:like|love|enjoy|hate)\s+{_REST}", "preference", 0.6),
    (rf"\bi (?:don['’]t|do not) like\s+{_REST}", "preference", 0.6),
    (rf"\bmy favou?rite\s+{_REST}", "preference", 0.6),
    (rf"\bmon \w+ pr[ée]f[ée]r[ée]e? est\s+{_REST}", "preference", 0.6),
    (rf"\bma \w+ pr[ée]f[ée]r[ée]e est\s+{_REST}", "preference", 0.6),
)
_COMPILED: Final = tuple((re.compile(p, re.IGNORECASE), k, i) for p, k, i in _RULES)
# A clause ends at a comma, or where a new clause about the user begins ("… et je …").
_CLAUSE_END: Final = re.compile(
    r",|\s+(?:mais|but)\s+|\s+(?:et|and)\s+(?=(?:je|j['’]|i|my|mon|ma)\b)", re.IGNORECASE
)
_QUESTION: Final = re.compile(r"\?\s*$")


def rule_candidates(text: str) -> list[Candidate]:
    """Explicit self-statements in `text`, as short memories in the user's own words."""
    found: list[Candidate] = []
    for sentence in re.split(r"(?<=[.!?\n])\s*", text[:20_000]):
        if _QUESTION.search(sentence):
            continue  # "do I like tea?" states nothing
        for pattern, kind, importance in _COMPILED:
            for match in pattern.finditer(sentence):
                value = _CLAUSE_END.split(match.group("v"), maxsplit=1)[0].strip(" '’\"")
                if not value:
                    continue
                clause = sentence[match.start() : match.start("v")] + value
                clause = clause[0].upper() + clause[1:] + "."
                if all(c.text.casefold() != clause.casefold() for c in found):
                    found.append(Candidate(clause, kind, importance))
    return found


EXTRACT_PROMPT: Final = (
    "Read the message a user wrote. List the facts and preferences the user states about "
    "themselves, one per line, each starting with 'fact:' or 'preference:'. Use the user's "
    "words. If there are none, answer 'none'.\n\nMessage: \"{message}\"\n"
)
_LINE: Final = re.compile(r"^\s*(?:[-*\d.)]+\s*)?(?:(fact|preference)\s*:\s*)?(.+?)\s*$", re.I)
_MAX_MODEL_LINES: Final = 5


def _words(text: str) -> set[str]:
    plain = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in plain if not unicodedata.combining(c))
    return {w for w in re.findall(r"\w+", plain) if len(w) >= 4}


def parse_model_output(output: str, message: str) -> list[Candidate]:
    """Lines the model wrote that are grounded in the user's message (content words shared)."""
    source = _words(message)
    out: list[Candidate] = []
    for line in output.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        kind, text = (match.group(1) or "").lower(), match.group(2).strip(" \"'")
        if text.lower().rstrip(".") in ("none", "aucun", "rien", "") or len(text) > 200:
            continue
        words = _words(text)
        # Every content word must come from the message: a small model invents freely.
        if not words or not words <= source:
            continue
        ruled = rule_candidates(text)
        if ruled:
            out.extend(c for c in ruled if c not in out)
        elif kind in ("fact", "preference"):
            out.append(Candidate(text[0].upper() + text[1:], kind, 0.5))
        if len(out) >= _MAX_MODEL_LINES:
            break
    return out


async def model_candidates(generate: Generate, message: str) -> list[Candidate]:
    """Ask the local model; its answer is filtered by `parse_model_output`."""
    prompt = EXTRACT_PROMPT.format(message=message[:1500].replace('"', "'"))
    return parse_model_output(await generate(prompt), message)
