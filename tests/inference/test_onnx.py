"""Provider choice with the real onnxruntime (CPU build here) and a model it ships."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from mongars_edge.inference import onnx

MODEL = Path(onnxruntime.__file__).parent / "datasets" / "mul_1.onnx"
JETSON = (onnx.TENSORRT, onnx.CUDA, onnx.CPU)


def test_specs_keep_order_add_options_and_end_with_cpu(tmp_path: Path) -> None:
    specs = onnx.provider_specs(JETSON, cache_dir=tmp_path / "trt", available=JETSON)
    assert [n for n, _ in specs] == list(JETSON)
    trt = dict(specs)[onnx.TENSORRT]
    assert trt["trt_engine_cache_enable"] is True
    assert Path(trt["trt_engine_cache_path"]).is_dir()
    assert onnx.provider_specs([], available=[]) == [(onnx.CPU, {})]


def test_missing_providers_fall_back_to_cpu(tmp_path: Path) -> None:
    session, active = onnx.open_session(MODEL, JETSON, cache_dir=tmp_path)
    assert active == onnx.CPU
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)
    [y] = session.run(None, {session.get_inputs()[0].name: x})
    assert np.allclose(y, x * x)


def test_the_session_book_says_what_each_model_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx.SESSIONS.clear()
    with caplog.at_level(logging.INFO, logger="mongars_edge.inference.onnx"):
        onnx.open_session(MODEL, JETSON, cache_dir=tmp_path, name="mul")
    [opened] = onnx.SESSIONS.all()
    present = onnxruntime.get_available_providers()
    assert opened.model == "mul" and opened.provider == onnx.CPU
    assert opened.wanted == JETSON and opened.failed == ()
    assert opened.engine_state() is None  # not on TensorRT: no engine to speak of
    assert opened.to_dict() == {"provider": onnx.CPU, "wanted": list(JETSON)}
    [record] = [r for r in caplog.records if r.getMessage() == "ONNX model mul runs on " + onnx.CPU]
    assert record.__dict__["onnx_provider"] == onnx.CPU
    assert record.__dict__["onnx_wanted"] == list(JETSON)
    if onnx.TENSORRT not in present:  # this machine's build: no engine folder is made
        assert list(tmp_path.iterdir()) == []
    onnx.SESSIONS.clear()


def test_each_model_has_its_own_engine_folder(tmp_path: Path) -> None:
    voice = tmp_path / "fr_FR-siwis-medium.onnx"
    voice.write_bytes(MODEL.read_bytes())
    first = onnx.engine_dir(tmp_path / "trt", voice)
    assert first == onnx.engine_dir(tmp_path / "trt", voice)
    assert first.name.startswith("fr_FR-siwis-medium-") and first.parent == tmp_path / "trt"
    assert first != onnx.engine_dir(tmp_path / "trt", MODEL)
    voice.write_bytes(MODEL.read_bytes() + b"\0")  # a new voice file: its engine is rebuilt
    assert onnx.engine_dir(tmp_path / "trt", voice) != first
    graph = MODEL.read_bytes()
    assert onnx.engine_dir(tmp_path, graph) == onnx.engine_dir(tmp_path, bytes(graph))
    assert onnx.engine_dir(tmp_path, graph).name.startswith("in-memory-")


def test_the_engine_is_built_on_first_use_then_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "joe-0123456789ab"
    folder.mkdir()
    opened = onnx.Opened("joe.onnx", JETSON, onnx.TENSORRT, engine_dir=folder)
    with caplog.at_level(logging.INFO, logger="mongars_edge.inference.onnx"):
        onnx._say_engine("joe.onnx", folder)
    assert "building TensorRT engine for joe.onnx, first use only" in caplog.text
    assert opened.engine_state() == "building (first use only)"
    # What ONNX Runtime's TensorRT provider leaves there (names as its engine cache writes them).
    engine = "TensorrtExecutionProvider_TRTKernel_graph_main_graph_1234567890_0_0_fp16_sm87"
    (folder / f"{engine}.engine").write_bytes(b"plan")
    (folder / f"{engine}.profile").write_bytes(b"shapes")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mongars_edge.inference.onnx"):
        onnx._say_engine("joe.onnx", folder)
    assert "reusing the TensorRT engine for joe.onnx (1 in" in caplog.text
    assert opened.engine_state() == "cached"
    assert opened.to_dict()["tensorrt_engine"] == "cached"


def test_gpu_check_on_this_machines_onnxruntime() -> None:
    from mongars_edge.inference.gpu_check import check

    facts = check()
    assert facts["present"].split(",") == onnxruntime.get_available_providers()
    assert facts["package"] == f"onnxruntime {onnxruntime.__version__}"
    # PyPI's build here has no CUDA provider: nothing is asked of CUDA.
    assert onnx.CUDA not in facts["present"]
    assert facts["cuda_session"] == ""


def test_the_cpu_asked_for_is_not_news(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A box that wants only the CPU logs its sessions at debug: a command opening the embedder
    does not print a line about it on every run."""
    with caplog.at_level(logging.INFO, logger="mongars_edge.inference.onnx"):
        onnx.open_session(MODEL, (onnx.CPU,), cache_dir=tmp_path, name="mul")
    assert not [r for r in caplog.records if "runs on" in r.getMessage()]
    onnx.SESSIONS.clear()
