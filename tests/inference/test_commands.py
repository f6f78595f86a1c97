"""The click commands through CliRunner, on a temporary data dir."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from mongars_edge.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_models_list_shows_the_embedded_default(data_dir: Path) -> None:
    code, out = run("models", "list", "--data-dir", str(data_dir))
    assert code == 0
    assert "smollm2-135m-instruct" in out
    assert "installed" in out
    code, out = run("models", "list", "--json", "--data-dir", str(data_dir))
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["smollm2-135m-instruct"]["installed"] is True
    assert rows["qwen2.5-0.5b-instruct"]["installed"] is False


def test_models_list_shows_pypi_and_speech_models(data_dir: Path) -> None:
    code, out = run("models", "list", "--data-dir", str(data_dir))
    assert code == 0
    lines = {line[2:].split()[0]: line for line in out.splitlines() if line.strip()}
    assert " chat " in lines["qwen2.5-coder-1.5b-instruct"]
    assert " pypi " in lines["qwen2.5-coder-1.5b-instruct"]
    assert " speech " in lines["whisper-base"]
    code, out = run("models", "list", "--json", "--data-dir", str(data_dir))
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["whisper-base"]["kind"] == "stt"
    assert rows["qwen2.5-coder-0.5b-instruct"]["auto"] is True
    assert rows["qwen2.5-coder-0.5b-instruct"]["sampling"]["top_p"] == 0.8


def test_models_errors_are_one_line(data_dir: Path) -> None:
    code, out = run("models", "pull", "nope", "--data-dir", str(data_dir))
    assert code == 1
    assert out.startswith("error: no model 'nope' in the catalog")
    assert "Traceback" not in out
    code, out = run("models", "rm", "qwen2.5-0.5b-instruct", "--data-dir", str(data_dir))
    assert code == 1
    assert "not downloaded" in out


def test_adapters_add_list_rm(data_dir: Path, models: dict[str, Path]) -> None:
    base = ["--data-dir", str(data_dir), "--model", str(models["tiny"])]
    code, out = run("adapters", "add", str(models["tiny_lora_a"]), "--name", "pirate", *base)
    assert code == 0, out
    assert "added pirate" in out
    code, out = run("adapters", "list", "--json", "--data-dir", str(data_dir))
    [card] = json.loads(out)
    assert card["name"] == "pirate"
    assert card["architecture"] == "llama"
    stored = data_dir / "adapters" / f"{card['sha256']}.gguf"
    assert stored.read_bytes() == models["tiny_lora_a"].read_bytes()
    code, out = run("adapters", "rm", "pirate", "--data-dir", str(data_dir))
    assert code == 0
    assert not stored.exists()
    code, out = run("adapters", "list", "--data-dir", str(data_dir))
    assert code == 0 and out.startswith("no adapters on this box (add one:")


def test_adapters_for_another_model_are_refused(data_dir: Path, models: dict[str, Path]) -> None:
    base = ["--data-dir", str(data_dir), "--model", str(models["tiny"])]
    code, out = run("adapters", "add", str(models["lora_wrong_arch"]), *base)
    assert code == 1
    assert "qwen2 architecture" in out
    code, out = run("adapters", "add", str(models["lora_wrong_shape"]), *base)
    assert code == 1
    assert "does not fit" in out
    code, out = run("adapters", "add", str(models["tiny"]), *base)
    assert code == 1
    assert "not a LoRA adapter" in out
    stored = data_dir / "adapters"
    assert not stored.exists() or not list(stored.iterdir())


def test_bench_writes_a_measured_profile(data_dir: Path, models: dict[str, Path]) -> None:
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.manager import load_profile

    code, out = run(
        "bench", "--quick", "--json", "--data-dir", str(data_dir), "--model", str(models["tiny"])
    )
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["profile"]["source"] == "measured"
    assert set(report["parallel"]["aggregate_tok_s"]) == {"1", "2", "4"}
    profile = load_profile(probe(Path("/"), data_dir), data_dir)
    assert profile.source == "measured"
    assert profile.n_parallel == report["chosen"]["n_parallel"]
    assert profile.reasons["n_parallel"].startswith("measured:")
