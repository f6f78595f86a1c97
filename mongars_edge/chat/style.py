"""Style adaptation: a per-user profile measured from the user's own messages.

Each message is measured (length in words, tu/vous, formal and casual markers, emoji,
questions); the profile is an exponential moving average, so it follows a person whose style
drifts. `directives` turns the numbers into a few plain instructions for the system prompt.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from mongars_edge.chat.lang import Lang
from mongars_edge.datadir import write_private

log = logging.getLogger(__name__)

_ALPHA: Final = 0.3  # weight of the newest message in the moving averages
_MIN_MESSAGES: Final = 2  # below this, the profile says nothing
_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)
_EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
_TU = frozenset(["tu", "toi", "ton", "ta", "tes", "t'es", "t'as", "te", "peux-tu", "sais-tu"])
_VOUS = frozenset(["vous", "votre", "vos", "pourriez-vous", "pouvez-vous", "sauriez-vous"])
_FORMAL = (
    "bonjour",
    "veuillez",
    "pourriez",
    "s'il vous plaît",
    "je vous remercie",
    "cordialement",
    "please",
    "could you",
    "would you",
    "kindly",
    "dear",
    "thank you",
    "i would like",
)
_CASUAL = (
    "salut",
    "allo",
    "lol",
    "mdr",
    "pis",
    "tsé",
    "chu",
    "ouin",
    "yo",
    "hey",
    "gonna",
    "wanna",
    "thx",
    "yeah",
    "yep",
    "nope",
    "ok",
    "cool",
    "stp",
    "svp",
)


@dataclass(frozen=True)
class MessageStyle:
    """What one message measures."""

    words: int
    tu: int
    vous: int
    formality: float  # 0 casual .. 1 formal
    emoji: bool
    question: bool


def measure(text: str) -> MessageStyle:
    """Measure one user message."""
    lowered = text.lower().replace("’", "'")
    words = _WORD.findall(lowered)
    padded = " " + " ".join(words) + " "
    formal: float = sum(1 for m in _FORMAL if f" {m} " in padded or m in lowered.split(","))
    casual: float = sum(1 for m in _CASUAL if f" {m} " in padded)
    emoji = bool(_EMOJI.search(text))
    stripped = text.strip()
    # Sentence case and final punctuation are weak signs of care; all-lowercase of casualness.
    if stripped[:1].isupper():
        formal += 0.5
    elif stripped[:1].islower():
        casual += 0.5
    if stripped.endswith((".", "?", "!")):
        formal += 0.25
    if emoji or "!!" in text:
        casual += 1
    formality = 0.5 + 0.5 * (formal - casual) / max(1.0, formal + casual)
    return MessageStyle(
        words=len(words),
        tu=sum(1 for w in words if w in _TU),
        vous=sum(1 for w in words if w in _VOUS),
        formality=min(1.0, max(0.0, formality)),
        emoji=emoji,
        question="?" in text,
    )


@dataclass(frozen=True)
class StyleProfile:
    """Moving averages over a user's messages."""

    messages: int = 0
    words: float = 0.0
    formality: float = 0.5
    tu_share: float = 0.5  # of messages that address the box as tu or vous, the tu fraction
    emoji: float = 0.0

    def observe(self, style: MessageStyle) -> StyleProfile:
        """The profile after one more message."""
        if self.messages == 0:
            tu_share = 0.5 if style.tu == style.vous else float(style.tu > style.vous)
            return StyleProfile(1, style.words, style.formality, tu_share, float(style.emoji))
        a = _ALPHA

        def ema(old: float, new: float) -> float:
            return (1 - a) * old + a * new

        tu_share = self.tu_share
        if style.tu != style.vous:
            tu_share = ema(tu_share, float(style.tu > style.vous))
        return replace(
            self,
            messages=self.messages + 1,
            words=ema(self.words, style.words),
            formality=ema(self.formality, style.formality),
            tu_share=tu_share,
            emoji=ema(self.emoji, float(style.emoji)),
        )

    def length_target(self) -> str | None:
        """short, medium or long, from the user's own message length."""
        if self.messages < _MIN_MESSAGES:
            return None
        if self.words < 8:
            return "short"
        if self.words < 20:
            return "medium"
        return "long"

    def directives(self, lang: Lang) -> list[str]:
        """Instructions for the system prompt, in the reply's language."""
        if self.messages < _MIN_MESSAGES:
            return []
        fr = lang == "fr"
        out: list[str] = []
        length = self.length_target()
        if length == "short":
            out.append(
                "Réponds brièvement : une à trois phrases."
                if fr
                else "Answer briefly: one to three sentences."
            )
        elif length == "long":
            out.append(
                "La personne écrit longuement : des réponses détaillées sont bienvenues."
                if fr
                else "The user writes at length: detailed answers are welcome."
            )
        if self.formality < 0.4:
            out.append("Ton décontracté et amical." if fr else "Use a relaxed, friendly tone.")
        elif self.formality > 0.65:
            out.append("Ton poli et soigné." if fr else "Use a polite, careful tone.")
        if fr and self.tu_share >= 0.6:
            out.append("Tutoie la personne.")
        elif fr and self.tu_share <= 0.4:
            out.append("Vouvoie la personne.")
        if self.emoji >= 0.3:
            out.append("Un emoji à l'occasion, ça va." if fr else "An emoji now and then is fine.")
        return out


class StyleBook:
    """Per-user profiles kept as small JSON files (written from a worker thread)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()  # two turns of one user may finish together

    def _path(self, user_id: int) -> Path:
        return self.folder / f"style-{int(user_id)}.json"

    def get(self, user_id: int) -> StyleProfile:
        """The stored profile (a fresh one if absent or unreadable). Blocking: call in a thread."""
        path = self._path(user_id)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return StyleProfile(**{k: data[k] for k in asdict(StyleProfile())})
        except FileNotFoundError:
            return StyleProfile()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable style profile %s: %s", path, exc)
            return StyleProfile()

    def learn(self, user_id: int, text: str) -> StyleProfile:
        """Fold one message into the user's profile and store it. Blocking: call in a thread."""
        with self._lock:
            profile = self.get(user_id).observe(measure(text))
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            # How a person writes is personal: owner-only, like the database.
            write_private(self._path(user_id), json.dumps(asdict(profile)))
            return profile

    def forget(self, user_id: int) -> None:
        """Drop the profile (user deleted). Blocking."""
        self._path(user_id).unlink(missing_ok=True)
