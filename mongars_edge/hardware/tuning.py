"""Hardware facts -> TuningProfile: a pure function, every choice with a one-line reason."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TypeVar

from mongars_edge.hardware.probe import HardwareFacts

T = TypeVar("T")
TIERS = ("tiny", "small", "medium", "large")
# Per tier: Q4 weights (MiB) and KV cache (MiB per 1k tokens, f16), rounded up from the
# catalogue's reference models (SmolLM2-135M, Qwen2.5-0.5B, 1-1.5B, Llama-3.2-3B).
_WEIGHTS_MB = {"tiny": 110, "small": 420, "medium": 1050, "large": 2000}
_KV_MB_PER_1K = {"tiny": 23, "small": 12, "medium": 32, "large": 112}
_RUNTIME_MB = 300  # llama.cpp compute buffers, Python, sockets
_OS_RESERVE_MB = 1536  # kernel, page cache for SQLite, Piper/Whisper/embeddings
_HOT_C = 80.0  # Pi firmware soft-throttles at 80 C; Orin starts well above, so this is early
_JETSON_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Choice:
    """One tuning decision and why it was made."""

    value: object
    reason: str


@dataclass(frozen=True)
class TuningProfile:
    """How the inference core, ONNX models and speech should run on this box."""

    backend: str
    n_threads: int
    n_threads_batch: int
    ctx_size: int
    n_batch: int
    n_ubatch: int
    n_gpu_layers: int
    n_parallel: int
    model_tier: str
    onnx_providers: tuple[str, ...]
    speech: bool
    stt: bool
    reasons: dict[str, str] = field(default_factory=dict)
    source: str = "heuristic"

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["onnx_providers"] = list(self.onnx_providers)
        out["reasons"] = dict(self.reasons)
        return out

    def summary(self) -> dict[str, object]:
        """The few numbers /health and the TUI show."""
        return {
            "backend": self.backend,
            "threads": self.n_threads,
            "ctx": self.ctx_size,
            "parallel": self.n_parallel,
            "tier": self.model_tier,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> TuningProfile:
        """Rebuild a profile (e.g. the measured one `bench` wrote); ValueError if malformed."""
        try:
            profile = cls(
                backend=_typed(d, "backend", str),
                n_threads=_typed(d, "n_threads", int),
                n_threads_batch=_typed(d, "n_threads_batch", int),
                ctx_size=_typed(d, "ctx_size", int),
                n_batch=_typed(d, "n_batch", int),
                n_ubatch=_typed(d, "n_ubatch", int),
                n_gpu_layers=_typed(d, "n_gpu_layers", int),
                n_parallel=_typed(d, "n_parallel", int),
                model_tier=_typed(d, "model_tier", str),
                onnx_providers=tuple(_str_list(d, "onnx_providers")),
                speech=_typed(d, "speech", bool),
                stt=_typed(d, "stt", bool),
                reasons=_str_dict(d.get("reasons", {})),
                source=_typed(d, "source", str),
            )
        except KeyError as exc:
            raise ValueError(f"tuning profile is missing {exc.args[0]!r}") from None
        if profile.model_tier not in TIERS:
            raise ValueError(f"tuning profile model_tier {profile.model_tier!r} not in {TIERS}")
        return profile


def _typed(d: dict[str, object], key: str, kind: type[T]) -> T:
    value = d[key]
    # bool is an int subclass; a count of True threads is a malformed file, not 1.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"tuning profile {key!r} should be {kind.__name__}, got {value!r}")
    return value


def _str_list(d: dict[str, object], key: str) -> list[str]:
    value = d[key]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"tuning profile {key!r} should be a list of strings")
    return [str(v) for v in value]


def _str_dict(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("tuning profile 'reasons' should map names to strings")
    return {str(k): v for k, v in value.items()}


def _hot(facts: HardwareFacts) -> str | None:
    if facts.throttled:
        return "the firmware reports throttling now"
    if facts.max_temp_c is not None and facts.max_temp_c >= _HOT_C:
        return f"running hot ({facts.max_temp_c:.0f} C >= {_HOT_C:.0f} C)"
    return None


def _threads(facts: HardwareFacts, hot: str | None) -> Choice:
    cores = max(1, facts.cpu_count)
    if cores > 4:
        n, why = cores - 1, f"{cores} cores, one left for the event loop and speech"
    else:
        # On <= 4 cores decode is memory-bound and every core counts; the loop is mostly idle.
        n, why = cores, f"{cores} cores, all used (too few to spare one)"
    if hot and n > 1:
        n, why = n - 1, f"{why}; one fewer because {hot}"
    return Choice(n, why)


def _parallel(facts: HardwareFacts, hot: str | None) -> Choice:
    mem = facts.mem_total_mb
    if mem <= 0:
        n, why = 1, "RAM unknown: one sequence"
    elif mem < 2048:
        n, why = 1, f"{mem} MiB RAM: one sequence"
    elif mem < 6144:
        n, why = 2, f"{mem} MiB RAM: two sequences fit beside the OS"
    elif mem < 16384 or not (facts.cuda or facts.cpu_count >= 8):
        n, why = 4, "batching 4 sequences raises aggregate tok/s even on 2 cores"
    else:
        n, why = 8, f"{mem} MiB RAM and {'a GPU' if facts.cuda else 'many cores'}: 8 sequences"
    if hot and n > 1:
        n, why = n // 2, f"{why}; halved because {hot}"
    return Choice(n, why)


def _ctx(facts: HardwareFacts) -> Choice:
    mem = facts.mem_total_mb
    if mem >= 32768:
        return Choice(8192, f"{mem} MiB RAM: long conversations and recalled memories fit")
    if mem >= 6144:
        return Choice(4096, f"{mem} MiB RAM: 4k tokens per sequence")
    return Choice(2048, f"{mem} MiB RAM: 2k tokens keeps the KV cache small")


def _compute_cap(facts: HardwareFacts) -> Choice:
    """The largest tier this compute can serve at a usable speed, whatever the RAM."""
    if facts.cuda:
        return Choice("large", "CUDA GPU: 3B runs at chat speed")
    if facts.cpu_count <= 2:
        return Choice("small", f"{facts.cpu_count} CPU cores: 1B+ models answer too slowly")
    if facts.arch == "aarch64" and "asimddp" not in facts.cpu_flags:
        return Choice("small", f"{facts.cpu_model} lacks dot-product SIMD: 1B+ too slow")
    if facts.cpu_count < 8:
        return Choice("medium", f"{facts.cpu_count} CPU cores: 3B would be under 5 tok/s")
    return Choice("large", f"{facts.cpu_count} CPU cores")


def _tier(facts: HardwareFacts, ctx: int, parallel: int) -> Choice:
    """Largest tier within the compute cap whose weights + KV fit in RAM with headroom."""
    cap = _compute_cap(facts)
    mem = facts.mem_total_mb
    budget = mem - _OS_RESERVE_MB - mem * 15 // 100
    tokens_k = ctx * parallel / 1024
    for tier in reversed(TIERS[: TIERS.index(str(cap.value)) + 1]):
        need = _WEIGHTS_MB[tier] + _KV_MB_PER_1K[tier] * tokens_k + _RUNTIME_MB
        if need <= budget:
            limit = "" if tier == cap.value else f"; {cap.value} would not fit"
            return Choice(
                tier, f"needs ~{need:.0f} of {budget} MiB budget; cap: {cap.reason}{limit}"
            )
    return Choice("tiny", f"RAM budget {budget} MiB is below every tier: the 135M default")


def _batch(facts: HardwareFacts) -> tuple[Choice, Choice]:
    if facts.cuda:
        why = "GPU prompt processing likes big batches"
        return Choice(1024, why), Choice(512, why)
    if facts.mem_total_mb < 6144:
        why = "small compute buffers on a small-RAM board"
        return Choice(256, why), Choice(128, why)
    why = "CPU prompt batches of 512 keep compute buffers modest"
    return Choice(512, why), Choice(512, why)


def _providers(facts: HardwareFacts) -> Choice:
    if facts.cuda and facts.board.startswith("jetson"):
        return Choice(_JETSON_PROVIDERS, "Jetson: TensorRT from JetPack, then CUDA, then CPU")
    if facts.cuda:
        return Choice(_JETSON_PROVIDERS[1:], "CUDA GPU without JetPack's TensorRT")
    return Choice(("CPUExecutionProvider",), "no CUDA GPU")


def _speech(facts: HardwareFacts) -> tuple[Choice, Choice]:
    mem = facts.mem_total_mb
    tts = Choice(mem >= 1536, f"Piper needs ~150 MiB and one core; {mem} MiB RAM")
    fast_simd = {"asimddp", "avx2"} & set(facts.cpu_flags)
    if facts.cuda:
        stt = Choice(True, "Whisper runs on the GPU")
    elif mem >= 3072 and fast_simd and facts.cpu_count >= 2:
        stt = Choice(
            True, f"{'/'.join(sorted(fast_simd))} SIMD: Whisper tiny/base faster than real time"
        )
    else:
        stt = Choice(False, "Whisper would compete with the LLM for too little CPU or RAM")
    return tts, stt


def profile_for(facts: HardwareFacts) -> TuningProfile:
    """Choose how to run on this hardware; pure, so recorded sysroots pin it down in tests."""
    hot = _hot(facts)
    threads = _threads(facts, hot)
    batch_threads = Choice(
        max(1, facts.cpu_count), "prompt processing is compute-bound: use every core"
    )
    parallel = _parallel(facts, hot)
    ctx = _ctx(facts)
    tier = _tier(facts, int(str(ctx.value)), int(str(parallel.value)))
    n_batch, n_ubatch = _batch(facts)
    backend = Choice(
        "llama.cpp-cuda" if facts.cuda else "llama.cpp-cpu",
        "CUDA runtime/GPU found" if facts.cuda else "no CUDA GPU found",
    )
    gpu_layers = Choice(
        999 if facts.cuda else 0,
        "unified memory: all layers on the GPU" if facts.cuda else "CPU only",
    )
    tts, stt = _speech(facts)
    choices = {
        "backend": backend,
        "n_threads": threads,
        "n_threads_batch": batch_threads,
        "ctx_size": ctx,
        "n_batch": n_batch,
        "n_ubatch": n_ubatch,
        "n_gpu_layers": gpu_layers,
        "n_parallel": parallel,
        "model_tier": tier,
        "onnx_providers": _providers(facts),
        "speech": tts,
        "stt": stt,
    }
    if facts.amx_advertised:
        choices["backend"] = Choice(
            backend.value, f"{backend.reason}; AMX advertised but not relied on (faults in VMs)"
        )
    values = {name: c.value for name, c in choices.items()}
    return TuningProfile.from_dict(
        {**values, "reasons": {n: c.reason for n, c in choices.items()}, "source": "heuristic"}
    )
