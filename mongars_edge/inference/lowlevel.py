"""Thin typed helpers over llama-cpp-python's ctypes API (`llama_cpp.llama_cpp`).

Imported lazily by the engine so that CLI commands start fast. Nothing here is async; the
callers decide which thread runs it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L

from mongars_edge.inference.backends import (
    CPU_MODULE,
    CpuBackend,
    load_backends,
    loaded_cpu_module,
    parse_system_info,
)
from mongars_edge.inference.engine import Sampling
from mongars_edge.inference.errors import ChatTemplateMissingError, GrammarError, ModelLoadError

log = logging.getLogger(__name__)
_native_log = logging.getLogger("mongars_edge.inference.llama_cpp")

_init_lock = threading.Lock()
_initialised = False
# Recent error lines from llama.cpp, so a failed load can say why.
_recent_errors: deque[str] = deque(maxlen=8)
_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


@L.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    message = text.decode("utf-8", errors="replace").rstrip()
    if not message:
        return
    if level == 4:  # GGML_LOG_LEVEL_ERROR
        _recent_errors.append(message)
    # llama.cpp is chatty; everything goes to debug, where `--log-level debug` shows it.
    _native_log.debug("%s", message)


def _close_devnull() -> None:
    # llama_cpp._utils opens /dev/null twice at import and never closes it: Python then warns
    # (ResourceWarning) at every interpreter exit.
    with contextlib.suppress(Exception):
        from llama_cpp import _utils

        _utils.outnull_file.close()
        _utils.errnull_file.close()


atexit.register(_close_devnull)


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log lines into `logging`."""
    global _initialised
    with _init_lock:
        if _initialised:
            return
        L.llama_log_set(_log_callback, ctypes.c_void_p(0))
        # Builds with per-CPU backend modules (the Pi image) load the best one from the
        # wheel's lib folder; ggml alone would look beside the Python executable.
        load_backends(L._lib, Path(L.__file__).parent / "lib")
        L.llama_backend_init()
        _initialised = True


def cpu_backend() -> CpuBackend:
    """Load llama.cpp's backends (as the engine does) and say which CPU variant was picked."""
    try:
        init_backend()
        lib_dir = Path(L.__file__).parent / "lib"
        registered = load_backends(L._lib, lib_dir)
        info = parse_system_info(L.llama_print_system_info().decode("utf-8", "replace"))
    except (ImportError, OSError, AttributeError) as exc:
        return CpuBackend("unavailable", error=f"llama.cpp cannot be loaded: {exc}")
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        maps = ""
    module = loaded_cpu_module(maps)
    features = info.get("CPU", {})
    if module is not None:
        found = CPU_MODULE.search(module)
        return CpuBackend(found.group(1) if found else "unknown", module, features)
    if registered == 0 or "CPU" not in info:
        return CpuBackend(
            "none",
            error=f"no CPU backend could be loaded from {lib_dir} (is the CPU too old "
            "for every variant, or are the libggml-cpu-*.so files missing?)",
        )
    return CpuBackend("built-in", None, features)


def take_recent_errors() -> str:
    """The llama.cpp error lines logged since the last call."""
    text = "; ".join(_recent_errors)
    _recent_errors.clear()
    return text


def check_gguf_file(path: Path) -> None:
    """Cheap checks before llama.cpp sees the file, for clear messages."""
    if not path.is_file():
        from mongars_edge.inference.errors import ModelNotFoundError

        raise ModelNotFoundError(f"model file {path} does not exist")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (it does not start with 'GGUF')")


@dataclass
class LoadedModel:
    """A llama.cpp model with its vocabulary and the metadata the engine needs."""

    ptr: Any
    vocab: Any
    path: Path
    architecture: str
    n_ctx_train: int
    n_params: int
    size_bytes: int
    chat_template: str | None
    n_layer: int
    n_embd: int
    n_vocab: int
    bos_id: int
    eos_id: int
    add_bos: bool
    _pieces: dict[int, bytes] = field(default_factory=dict, repr=False)
    _eog: dict[int, bool] = field(default_factory=dict, repr=False)

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Text -> token ids; special tokens written in the text are parsed (any thread)."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (L.llama_token * n_max)()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        if n < 0:
            n_max = -n
            buf = (L.llama_token * n_max)()
            n = L.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, True)
        return list(buf[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (cached: the worker asks for one per generated token)."""
        key = token if not special else ~token
        cached = self._pieces.get(key)
        if cached is None:
            cached = self._pieces[key] = self._piece(token, special)
        return cached

    def _piece(self, token: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = L.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        known = self._eog.get(token)
        if known is None:
            known = self._eog[token] = bool(L.llama_vocab_is_eog(self.vocab, token))
        return known

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, 256)
        if n < 0:
            return None
        if n >= 256:
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.ptr, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def free(self) -> None:
        if self.ptr is not None:
            L.llama_model_free(self.ptr)
            self.ptr = None


#: The output layer's tensors (the tied head is token_embd's duplicate). A split keeps them on
#: this box: a worker holding them also needs the logits buffer (n_ubatch x vocabulary x 4 B,
#: 311 MB for Qwen2.5), and each token's logits (vocabulary x 4 B) would cross the link back
#: instead of one hidden state (n_embd x 4 B).
_OUTPUT_ON_CPU = r"^(output|output_norm|token_embd)\."


class _BuftOverride(ctypes.Structure):
    """llama.cpp's llama_model_tensor_buft_override: a tensor-name regex and a buffer type."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _cpu_overrides(pattern: str) -> ctypes.Array[_BuftOverride]:
    """A NULL-terminated override list sending tensors matching `pattern` to the CPU."""
    lib = L._lib
    lib.ggml_backend_cpu_buffer_type.argtypes = []
    lib.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    cpu = lib.ggml_backend_cpu_buffer_type()
    return (_BuftOverride * 2)(_BuftOverride(pattern.encode(), cpu), _BuftOverride(None, None))


def load_model(
    path: Path,
    *,
    n_gpu_layers: int = 0,
    require_template: bool = True,
    devices: Sequence[int] = (),
    tensor_split: Sequence[float] = (),
    vocab_only: bool = False,
    repack: bool = True,
) -> LoadedModel:
    """Load a GGUF model; ModelLoadError with llama.cpp's reason if it cannot be used.

    `devices` (ggml device handles, e.g. a split's RPC devices) replace the ones llama.cpp
    would pick: the last `n_gpu_layers` repeating layers go to them in the `tensor_split`
    proportions, the rest and the output layer (see `_OUTPUT_ON_CPU`) stay on the CPU.
    `vocab_only` reads the vocabulary and metadata, no weights. `repack` lets llama.cpp lay CPU
    weights out for its faster kernels (its extra buffer types).
    """
    init_backend()
    check_gguf_file(path)
    params = L.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.vocab_only = vocab_only
    params.use_extra_bufts = repack
    # Kept referenced until the load returns: llama.cpp copies them during the load.
    device_array = None
    split_array = None
    overrides = None
    if devices:
        device_array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
        params.devices = ctypes.cast(device_array, ctypes.c_void_p)
        params.split_mode = L.LLAMA_SPLIT_MODE_LAYER
        if n_gpu_layers > 0:
            # llama.cpp counts the output layer as the last of n_gpu_layers, on the last
            # device: one more, in the last device's share, and the override keeps it here.
            params.n_gpu_layers = n_gpu_layers + 1
            tensor_split = [*tensor_split[:-1], tensor_split[-1] + 1] if tensor_split else ()
            overrides = _cpu_overrides(_OUTPUT_ON_CPU)
            params.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
    if tensor_split:
        split_array = (ctypes.c_float * max(len(tensor_split), L.llama_max_devices()))(
            *tensor_split
        )
        params.tensor_split = split_array
    take_recent_errors()
    ptr = L.llama_model_load_from_file(str(path).encode(), params)
    del device_array, split_array, overrides
    if not ptr:
        why = take_recent_errors() or "unknown reason"
        if devices:
            raise ModelLoadError(
                f"llama.cpp cannot load {path} across the split's devices ({why}): a worker "
                "may have less memory than it offered"
            )
        raise ModelLoadError(
            f"llama.cpp cannot load {path} ({why}); the file may be truncated or corrupt: "
            "pull it again with `mongars-edge models pull`"
        )
    vocab = L.llama_model_get_vocab(ptr)
    raw_template = L.llama_model_chat_template(ptr, None)
    model = LoadedModel(
        ptr=ptr,
        vocab=vocab,
        path=path,
        architecture="",
        n_ctx_train=int(L.llama_model_n_ctx_train(ptr)),
        n_params=int(L.llama_model_n_params(ptr)),
        size_bytes=int(L.llama_model_size(ptr)),
        chat_template=raw_template.decode("utf-8") if raw_template else None,
        n_layer=int(L.llama_model_n_layer(ptr)),
        n_embd=int(L.llama_model_n_embd(ptr)),
        n_vocab=int(L.llama_vocab_n_tokens(vocab)),
        bos_id=int(L.llama_vocab_bos(vocab)),
        eos_id=int(L.llama_vocab_eos(vocab)),
        add_bos=bool(L.llama_vocab_get_add_bos(vocab)),
    )
    model.architecture = model.meta("general.architecture") or "unknown"
    if not model.n_layer:  # a vocab-only load reads no hyperparameters: the metadata says
        count = model.meta(f"{model.architecture}.block_count") or ""
        model.n_layer = int(count) if count.isdigit() else 0
        width = model.meta(f"{model.architecture}.embedding_length") or ""
        model.n_embd = int(width) if width.isdigit() else 0
    if require_template and not model.chat_template:
        model.free()
        raise ChatTemplateMissingError(
            f"{path} has no chat template in its metadata, so it cannot chat; "
            "use an instruct/chat model"
        )
    return model


@dataclass(frozen=True)
class ContextParams:
    """What the context is sized for."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    n_threads: int
    n_threads_batch: int
    flash_attn: bool = True


def new_context(model: LoadedModel, p: ContextParams) -> Any:
    """A context whose KV cache is shared by all sequences (any sequence may use all of it)."""
    params = L.llama_context_default_params()
    params.n_ctx = p.n_ctx
    params.n_batch = p.n_batch
    params.n_ubatch = p.n_ubatch
    params.n_seq_max = p.n_seq_max
    params.n_threads = p.n_threads
    params.n_threads_batch = p.n_threads_batch
    params.kv_unified = True
    params.flash_attn_type = (
        L.LLAMA_FLASH_ATTN_TYPE_ENABLED if p.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.no_perf = True
    take_recent_errors()
    ctx = L.llama_init_from_model(model.ptr, params)
    if not ctx:
        why = take_recent_errors() or "unknown reason"
        raise ModelLoadError(f"llama.cpp cannot create a context for {model.path} ({why})")
    return ctx


def build_sampler(
    model: LoadedModel, sampling: Sampling, grammar: str | None, triggers: Sequence[str] = ()
) -> Any:
    """A sampler chain for one sequence, in llama-cpp-python's order (so greedy agrees).

    With `triggers` the grammar is lazy: it applies from the first match of one of these
    regular expressions in the generated text (llama.cpp replays the matched text into it).
    """
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if sampling.repeat_penalty != 1.0:
        n_vocab = int(L.llama_vocab_n_tokens(model.vocab))
        L.llama_sampler_chain_add(
            chain, L.llama_sampler_init_penalties(n_vocab, 64, sampling.repeat_penalty, 0.0, 0.0)
        )
    if grammar is not None:
        take_recent_errors()
        if triggers:
            patterns = (ctypes.c_char_p * len(triggers))(*(t.encode("utf-8") for t in triggers))
            g = L.llama_sampler_init_grammar_lazy_patterns(
                model.vocab,
                grammar.encode("utf-8"),
                b"root",
                patterns,
                len(triggers),
                (L.llama_token * 0)(),
                0,
            )
        else:
            g = L.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
        if not g:
            L.llama_sampler_free(chain)
            why = take_recent_errors() or "syntax error"
            raise GrammarError(f"the grammar does not parse ({why})")
        L.llama_sampler_chain_add(chain, g)
    if sampling.temperature <= 0.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    if sampling.top_k > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(sampling.top_k))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(sampling.top_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(sampling.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(sampling.temperature))
    seed = sampling.seed if sampling.seed is not None else L.LLAMA_DEFAULT_SEED
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def free_sampler(chain: Any) -> None:
    L.llama_sampler_free(chain)
