"""Language detection, measured on labelled chat-style messages (short, informal, Québécois)."""

from __future__ import annotations

from mongars_edge.chat.lang import detect, from_accept_language

FRENCH = [
    "Salut, ça va?",
    "Peux-tu m'aider avec mon char?",
    "tsé, j'suis ben tanné de l'hiver",
    "Quelle heure est-il?",
    "Je veux une recette de pâté chinois",
    "Explique la photosynthèse",
    "c'est quoi la capitale de l'Australie",
    "faque on fait quoi à soir?",
    "Bonjour, pourriez-vous m'expliquer comment fonctionne un moteur?",
    "merci beaucoup!",
    "Il fait frette en maudit aujourd'hui",
    "J'ai besoin d'aide pour mes impôts",
    "Résume-moi ce texte en trois phrases",
    "as-tu vu mon chum?",
    "quessé tu fais là?",
    "Donne-moi des idées de souper pour la semaine",
    "Comment je fais pour changer mes pneus?",
    "Traduis « good morning » en français",
    "Pis, as-tu aimé le film?",
    "Où est le dépanneur le plus proche?",
    "Écris un poème sur le fleuve Saint-Laurent",
    "Je comprends pas pourquoi mon code plante",
    "Qui a gagné la coupe Stanley en 1993?",
    "On magasine-tu demain?",
    "Rappelle-moi d'appeler ma mère",
]
ENGLISH = [
    "Hello, how are you?",
    "What's the weather like today?",
    "Explain how a transistor works",
    "Can you help me with my taxes?",
    "Write a poem about the sea",
    "thanks a lot!",
    "What is the capital of Australia?",
    "I don't understand why my code crashes",
    "Give me dinner ideas for the week",
    "How do I change my tires?",
    "Who won the Stanley Cup in 1993?",
    "Remind me to call my mother",
    "Summarize this text in three sentences",
    "Is it going to rain tomorrow?",
    "Tell me a joke",
    "Could you please translate this into French?",
    "My cat keeps waking me up at night, any tips?",
    "What should I cook tonight?",
    "How many days until Christmas?",
    "Let's plan a trip to Montreal",
    "Why is the sky blue?",
    "I need a gift for my brother",
    "Where is the nearest store?",
    "Do you know any good books?",
    "Please write a short email to my boss",
]


def test_accuracy_on_labelled_messages() -> None:
    results = [(detect(t).lang, "fr") for t in FRENCH] + [(detect(t).lang, "en") for t in ENGLISH]
    correct = sum(1 for got, want in results if got == want)
    accuracy = correct / len(results)
    misses = [t for t, (got, want) in zip(FRENCH + ENGLISH, results, strict=True) if got != want]
    assert accuracy >= 0.95, f"accuracy {accuracy:.2f}; missed: {misses}"


def test_quebec_markers_and_no_evidence() -> None:
    assert detect("faque pis, tsé").quebec
    assert not detect("Bonjour madame").quebec
    for text in ("ok", "42", "", "😀", "https://x.y"):
        assert detect(text).lang is None


def test_accept_language() -> None:
    assert from_accept_language("fr-CA,fr;q=0.9,en;q=0.8") == "fr"
    assert from_accept_language("en-US,en;q=0.9,fr-CA;q=0.8") == "en"
    assert from_accept_language("de-DE,en;q=0.5,fr;q=0.7") == "fr"
    assert from_accept_language("de") is None
    assert from_accept_language(None) is None
    assert from_accept_language("fr;q=abc,en") == "en"
