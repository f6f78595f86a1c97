"""System prompts (fr-CA / en): persona, language, measured style, and recalled memories."""

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


def system_prompt(
    lang: Lang,
    *,
    style: Sequence[str] = (),
    memories: Sequence[str] = (),
    client_system: str = "",
) -> str:
    """The system message: the client's own system text wins over our persona when given."""
    parts = [client_system.strip() or _PERSONA[lang]]
    if client_system.strip():
        parts.append(_ANSWER_IN[lang])
    if style:
        parts.append(" ".join(style))
    if memories:
        lines = "\n".join(f"- {m.strip()}" for m in memories if m.strip())
        if lines:
            parts.append(f"{_MEMORY_HEADER[lang]}\n{lines}")
    return "\n\n".join(parts)
