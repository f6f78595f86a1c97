"""Provider choice with the real onnxruntime (CPU build here) and a model it ships."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

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
