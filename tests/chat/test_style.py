"""Style adaptation: profiles measured from a user's own messages shape the instructions."""

from __future__ import annotations

from pathlib import Path

from mongars_edge.chat.style import StyleBook, StyleProfile, measure

CASUAL_TU = ["salut! tu peux m'aider?", "ok cool", "pis toi tu penses quoi", "lol merci 😀"]
FORMAL_VOUS = [
    "Bonjour, pourriez-vous m'expliquer en détail le fonctionnement de la fiscalité des "
    "entreprises au Québec, en particulier pour les travailleurs autonomes?",
    "Je vous remercie. Pourriez-vous également préciser les obligations de déclaration "
    "trimestrielle et les dates limites applicables cette année, s'il vous plaît?",
    "Merci beaucoup. Sauriez-vous aussi me dire comment fonctionnent les acomptes "
    "provisionnels et ce qui arrive en cas de retard de paiement?",
]


def _profile(messages: list[str]) -> StyleProfile:
    profile = StyleProfile()
    for text in messages:
        profile = profile.observe(measure(text))
    return profile


def test_measure_one_message() -> None:
    casual = measure("salut tu fais quoi lol")
    formal = measure("Bonjour, pourriez-vous m'aider, s'il vous plaît?")
    assert casual.formality < 0.4 < 0.6 < formal.formality
    assert casual.tu == 1 and casual.vous == 0
    assert formal.vous >= 1
    assert measure("hey 😀").emoji


def test_casual_short_tu_profile() -> None:
    profile = _profile(CASUAL_TU)
    assert profile.length_target() == "short"
    directives = profile.directives("fr")
    assert "Tutoie la personne." in directives
    assert any("brièvement" in d for d in directives)
    assert any("décontracté" in d for d in directives)


def test_formal_long_vous_profile() -> None:
    profile = _profile(FORMAL_VOUS)
    assert profile.length_target() == "long"
    directives = profile.directives("fr")
    assert "Vouvoie la personne." in directives
    assert any("poli" in d for d in directives)
    assert not any("brièvement" in d for d in directives)
    english = profile.directives("en")
    assert all("ouvoie" not in d for d in english)


def test_one_message_says_nothing_and_profiles_drift() -> None:
    assert _profile(CASUAL_TU[:1]).directives("fr") == []
    drifted = _profile(FORMAL_VOUS + CASUAL_TU * 3)
    assert drifted.tu_share > 0.6
    assert drifted.length_target() == "short"


def test_style_book_round_trip(tmp_path: Path) -> None:
    book = StyleBook(tmp_path / "chat")
    assert book.get(7) == StyleProfile()
    for text in CASUAL_TU:
        book.learn(7, text)
    assert book.get(7) == _profile(CASUAL_TU)
    (tmp_path / "chat" / "style-8.json").write_text("{garbage")
    assert book.get(8) == StyleProfile()
    book.forget(7)
    assert book.get(7) == StyleProfile()
