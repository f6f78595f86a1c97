"""Hardware facts -> TuningProfile: a pure function, every choice with a one-line reason."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TypeVar

from mongars_edge.hardware.probe import HardwareFacts

T = TypeVar("T")
TIERS = ("tiny", "small", "medium", "large")
# Per tier: Q4 weights (MiB) and KV cache (MiB per 1k tokens, f16), rounded up from the
# catalogue's reference models (SmolLM2-135M, Qwen2.5-0.5B, 1-1.5B, Llama-3.2-3B). A catalog
# model's own size replaces the weights figure when it is known.
_WEIGHTS_MB = {"tiny": 110, "small": 420, "medium": 1050, "large": 2000}
_KV_MB_PER_1K = {"tiny": 23, "small": 12, "medium": 32, "large": 112}
_RUNTIME_MB = 300  # llama.cpp compute buffers, sockets, per-request state
# Kernel and systemd (~150 MiB), the Python process with its libraries (~250), the embedder
# (~90), a Piper voice (~80) and page cache for SQLite: what a 2 GB Pi 4 runs beside the model.
_OS_RESERVE_MB = 700
_HEADROOM = 0.10  # of RAM kept free: the weights are mmap'd and must stay in page cache
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
    # The catalog model this box should run (`model = "auto"`); "" when none was offered.
    model: str = ""
    # The speech-to-text model (`stt_model = "auto"`): whisper-base or tiny.en.
    stt_model: str = "tiny.en"

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
            "model": self.model,
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
                # Profiles written before the model choice existed have none.
                model=_typed(d, "model", str) if "model" in d else "",
                stt_model=_typed(d, "stt_model", str) if "stt_model" in d else "tiny.en",
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


@dataclass(frozen=True)
class ModelOption:
    """A catalog model the profile may choose (`auto = true` in models/catalog.toml)."""

    id: str
    tier: str
    size_mb: int = 0  # 0: the tier's typical size


def memory_budget_mb(facts: HardwareFacts) -> int:
    """RAM the chat model (weights, KV cache, compute buffers) may take on this box."""
    mem = facts.mem_total_mb
    return max(0, mem - _OS_RESERVE_MB - int(mem * _HEADROOM))


def model_need_mb(tier: str, size_mb: int, ctx: int, parallel: int) -> int:
    """RAM a model of `tier` (weights of `size_mb`, 0: typical) needs for `parallel` x `ctx`."""
    weights = size_mb or _WEIGHTS_MB.get(tier, _WEIGHTS_MB["large"])
    kv = _KV_MB_PER_1K.get(tier, _KV_MB_PER_1K["large"]) * ctx * max(1, parallel) / 1024
    return int(weights + kv + _RUNTIME_MB)


def _compute_cap(facts: HardwareFacts) -> Choice:
    """The largest tier this compute can serve at a usable speed, whatever the RAM."""
    flags = set(facts.cpu_flags)
    if facts.cuda:
        return Choice("large", "CUDA GPU: 3B runs at chat speed")
    if facts.arch == "aarch64" and "asimddp" not in flags:
        return Choice("small", f"{facts.cpu_model} lacks dot-product SIMD: 1B+ too slow")
    if facts.arch == "x86_64" and "avx2" not in flags:
        return Choice("small", "no AVX2: 1B+ too slow")
    if facts.cpu_count < 2:
        return Choice("small", "one CPU core: 1B+ too slow")
    if facts.cpu_count < 8:
        # Measured on 2 x86 cores: the 1.5B Q4_K_M generates 15-24 tok/s; a Pi 5 is bandwidth-
        # bound at a similar figure. 3B halves that.
        return Choice("medium", f"{facts.cpu_count} CPU cores: 1.5B at chat speed, 3B too slow")
    return Choice("large", f"{facts.cpu_count} CPU cores")


def _tier(facts: HardwareFacts, ctx: int, parallel: int) -> Choice:
    """Largest tier within the compute cap whose weights + KV fit in RAM with headroom."""
    cap = _compute_cap(facts)
    budget = memory_budget_mb(facts)
    for tier in reversed(TIERS[: TIERS.index(str(cap.value)) + 1]):
        need = model_need_mb(tier, 0, ctx, parallel)
        if need <= budget:
            limit = "" if tier == cap.value else f"; {cap.value} would not fit"
            return Choice(tier, f"needs ~{need} of {budget} MiB budget; cap: {cap.reason}{limit}")
    return Choice("tiny", f"RAM budget {budget} MiB is below every tier: the 135M default")


def _model(
    facts: HardwareFacts, tier: str, ctx: int, parallel: int, options: Sequence[ModelOption]
) -> Choice:
    """The largest offered model within the tier that fits the RAM budget."""
    if not options:
        return Choice("", "no catalog models were offered")
    budget = memory_budget_mb(facts)
    allowed = TIERS.index(tier) if tier in TIERS else 0
    ranked = sorted(
        (o for o in options if o.tier in TIERS),
        key=lambda o: (TIERS.index(o.tier), o.size_mb),
        reverse=True,
    )
    for option in ranked:
        need = model_need_mb(option.tier, option.size_mb, ctx, parallel)
        if TIERS.index(option.tier) <= allowed and need <= budget:
            return Choice(
                option.id,
                f"the largest catalog model for a {tier} box: needs ~{need} of {budget} MiB",
            )
    smallest = min(ranked, key=lambda o: (TIERS.index(o.tier), o.size_mb), default=options[0])
    return Choice(smallest.id, f"nothing fits the {budget} MiB budget: the smallest model")


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


def _stt_model(stt: Choice) -> Choice:
    if stt.value:
        return Choice("whisper-base", "multilingual Whisper base: hears French and English")
    return Choice("tiny.en", "the small English-only model, if speech-to-text is turned on")


def profile_for(facts: HardwareFacts, models: Sequence[ModelOption] = ()) -> TuningProfile:
    """Choose how to run on this hardware; pure, so recorded sysroots pin it down in tests.

    `models`: the catalog models the box may run (`auto_options()` in inference.models); the
    profile's `model` is the largest that fits, "" when none are given.
    """
    hot = _hot(facts)
    threads = _threads(facts, hot)
    batch_threads = Choice(
        max(1, facts.cpu_count), "prompt processing is compute-bound: use every core"
    )
    parallel = _parallel(facts, hot)
    ctx = _ctx(facts)
    tier = _tier(facts, int(str(ctx.value)), int(str(parallel.value)))
    model = _model(facts, str(tier.value), int(str(ctx.value)), int(str(parallel.value)), models)
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
        "model": model,
        "onnx_providers": _providers(facts),
        "speech": tts,
        "stt": stt,
        "stt_model": _stt_model(stt),
    }
    if facts.amx_advertised:
        choices["backend"] = Choice(
            backend.value, f"{backend.reason}; AMX advertised but not relied on (faults in VMs)"
        )
    values = {name: c.value for name, c in choices.items()}
    return TuningProfile.from_dict(
        {**values, "reasons": {n: c.reason for n, c in choices.items()}, "source": "heuristic"}
    )
