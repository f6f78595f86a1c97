"""Prompts (fr-CA / en): the system message (persona, language, measured style) and recalled
memories, which ride on the newest user message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mongars_edge.chat.lang import Lang

_PERSONA: Final[dict[str, str]] = {
    "fr": (
        "Tu es monGARS, un assistant privé qui fonctionne sur une petite boîte à la maison, "
        "sans nuage. Réponds en français québécois naturel, clairement et honnêtement; "
        "si tu ne sais pas, dis-le."
    ),
    "en": (
        "You are monGARS, a private assistant running on a small box at home, with no cloud. "
        "Answer in English, clearly and honestly; if you do not know, say so."
    ),
}
_MEMORY_HEADER: Final[dict[str, str]] = {
    "fr": "Ce que tu sais de la personne (tiré de conversations passées) :",
    "en": "What you know about the user (from past conversations):",
}
_ANSWER_IN: Final[dict[str, str]] = {
    "fr": "Réponds en français.",
    "en": "Answer in English.",
}


#: With tools, small models tend to call the same tool again after its result comes back.
_AFTER_TOOLS: Final[dict[str, str]] = {
    "fr": "Quand le résultat d'un outil arrive, dis en une courte phrase ce qui a été fait, "
    "sans rappeler le même outil.",
    "en": "When a tool result comes back, say in one short sentence what was done; do not "
    "call the same tool again.",
}


def system_prompt(
    lang: Lang,
    *,
    style: Sequence[str] = (),
    client_system: str = "",
    tools: bool = False,
) -> str:
    """The system message: the client's own system text wins over our persona when given."""
    parts = [client_system.strip() or _PERSONA[lang]]
    if client_system.strip():
        parts.append(_ANSWER_IN[lang])
    if tools:
        parts.append(_AFTER_TOOLS[lang])
    if style:
        parts.append(" ".join(style))
    return "\n\n".join(parts)


def with_memories(lang: Lang, memories: Sequence[str], text: str) -> str:
    """The newest user message preceded by what was recalled for it.

    Recalled memories change from turn to turn; in the system message they changed the first
    tokens of every prompt, so no turn could reuse the KV cache of the one before. Here the
    system message and the history stay put and only the newest message is new.
    """
    lines = "\n".join(f"- {m.strip()}" for m in memories if m.strip())
    if not lines:
        return text
    return f"[{_MEMORY_HEADER[lang]}\n{lines}]\n\n{text}"
