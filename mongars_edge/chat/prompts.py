"""Prompts (fr-CA / en): the system message (persona, language, measured style) and recalled
memories, which ride on the newest user message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from mongars_edge.chat.lang import Lang

# "Réponds en français québécois" made Qwen2.5 1.5B answer "Montréal" to "C'est quoi la
# capitale du Canada?" (bench/quality.py): the persona asks for the local turn of phrase, not
# for Québec as the subject.
_PERSONA: Final[dict[str, str]] = {
    "fr": (
        "Tu es monGARS, un assistant privé qui fonctionne sur une petite boîte à la maison, "
        "sans nuage. Réponds en français, clairement, exactement et honnêtement, avec des "
        "tournures d'ici au besoin; si tu ne sais pas, dis-le."
    ),
    "en": (
        "You are monGARS, a private assistant running on a small box at home, with no cloud. "
        "Answer in English, clearly and honestly; if you do not know, say so."
    ),
}
# Spoken replies: a voice assistant reads the answer aloud, so lists, markdown and long
# paragraphs read badly and keep the listener waiting.
_SPOKEN: Final[dict[str, str]] = {
    "fr": (
        "Ta réponse sera lue à voix haute par un assistant vocal : réponds en une à trois "
        "phrases courtes, en texte simple, sans listes, sans markdown et sans émojis."
    ),
    "en": (
        "Your answer is read aloud by a voice assistant: answer in one to three short "
        "sentences of plain text, with no lists, no markdown and no emoji."
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
    persona: bool = True,
) -> str:
    """The system message: the client's own system text wins over our persona when given.
    Without `persona` (a model too small to follow it) there is no persona and no learned
    style either, and with no client text and no tools the message is empty: the model's
    template keeps its own. (The 135M answered 3 of bench/quality.py's 12 questions once the
    style book had learned "Answer briefly..." in place of its template's message, 4 without.)"""
    parts = [client_system.strip() or (_PERSONA[lang] if persona else "")]
    if client_system.strip():
        parts.append(_ANSWER_IN[lang])
    if tools:
        parts.append(_AFTER_TOOLS[lang])
    if style and persona:
        parts.append(" ".join(style))
    return "\n\n".join(p for p in parts if p)


def spoken_prompt(lang: Lang) -> str:
    """The system text of a turn whose answer is spoken (the persona, then how to speak)."""
    return f"{_PERSONA[lang]}\n\n{_SPOKEN[lang]}"


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
