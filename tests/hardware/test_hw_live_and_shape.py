"""The real machine probes cleanly; dicts are JSON; profiles round-trip; the doc is complete."""

from __future__ import annotations

import json
import os
import platform
import re
from pathlib import Path

import pytest

from mongars_edge.hardware import ThermalZone, TuningProfile, probe, profile_for

SYSROOTS = Path(__file__).resolve().parents[1] / "fixtures" / "sysroots"
DOC = Path(__file__).resolve().parents[2] / "docs" / "probe.md"
ALL_SYSROOTS = sorted(p.name for p in SYSROOTS.iterdir() if p.is_dir())


def test_live_probe(tmp_path: Path) -> None:
    facts = probe(data_dir=tmp_path)
    assert facts.arch == platform.machine()
    assert facts.cpu_count == len(os.sched_getaffinity(0))
    assert facts.mem_total_mb > 0
    assert 0 < facts.mem_available_mb <= facts.mem_total_mb
    assert facts.sysroot == "/"
    json.dumps(facts.to_dict())
    profile = profile_for(facts)
    assert 1 <= profile.n_threads <= facts.cpu_count
    json.dumps(profile.to_dict())


@pytest.mark.parametrize("name", ALL_SYSROOTS)
def test_dicts_are_json_and_round_trip(name: str) -> None:
    facts = probe(SYSROOTS / name)
    facts_json = json.loads(json.dumps(facts.to_dict()))
    assert facts_json["board"] == facts.board
    profile = profile_for(facts)
    data = json.loads(json.dumps(profile.to_dict()))
    assert TuningProfile.from_dict(data) == profile
    measured = TuningProfile.from_dict({**data, "source": "measured"})
    assert measured.summary()["source"] == "measured"


def test_summary_shape() -> None:
    summary = profile_for(probe(SYSROOTS / "pi5-8gb")).summary()
    assert summary == {
        "backend": "llama.cpp-cpu",
        "threads": 4,
        "ctx": 4096,
        "parallel": 4,
        "tier": "medium",
        "model": "",
        "source": "heuristic",
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_threads": "4"}, "'n_threads' should be int"),
        ({"n_threads": True}, "'n_threads' should be int"),
        ({"model_tier": "huge"}, "model_tier 'huge'"),
        ({"onnx_providers": "CPUExecutionProvider"}, "list of strings"),
        ({"reasons": {"n_threads": 4}}, "'reasons'"),
    ],
)
def test_from_dict_rejects_malformed(change: dict[str, object], message: str) -> None:
    data = {**profile_for(probe(SYSROOTS / "pi5-8gb")).to_dict(), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        TuningProfile.from_dict(data)


def test_from_dict_names_a_missing_key() -> None:
    data = profile_for(probe(SYSROOTS / "pi5-8gb")).to_dict()
    del data["ctx_size"]
    with pytest.raises(ValueError, match="ctx_size"):
        TuningProfile.from_dict(data)


def test_doc_names_every_key() -> None:
    doc = DOC.read_text(encoding="utf-8")
    facts = probe(SYSROOTS / "jetson-orin-nano-8gb")
    profile = profile_for(facts)
    keys = [
        *facts.to_dict(),
        *ThermalZone("x", None).__dataclass_fields__,
        *profile.to_dict(),
        *profile.summary(),
    ]
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert not missing, f"docs/probe.md does not describe: {missing}"


def test_live_relative_data_dir_resolves_from_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert probe(data_dir=Path("data")).storage == probe(data_dir=tmp_path).storage
