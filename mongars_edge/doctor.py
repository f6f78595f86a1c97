"""`mongars-edge doctor`: checks a box can do its job and says how to fix what it cannot."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass

from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

# Below this, model downloads and the database's WAL can fail mid-write on an SD card.
_MIN_FREE_MB = 500


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it is fine, and what to do when it is not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: A failed optional check (speech on a box without a voice) does not fail the doctor.
    required: bool = True


def _data_dir(settings: Settings) -> Check:
    path = settings.resolved_data_dir()
    probe_dir = path if path.exists() else path.parent
    writable = os.access(probe_dir, os.W_OK)
    fix = f"create it and give the service user write access: chown mongars-edge {path}"
    return Check("data directory", writable, str(path), "" if writable else fix)


def _free_space(settings: Settings) -> Check:
    path = settings.resolved_data_dir()
    while not path.exists() and path != path.parent:
        path = path.parent
    free_mb = shutil.disk_usage(path).free // 2**20
    ok = free_mb >= _MIN_FREE_MB
    fix = "free some space (mongars-edge models rm ID removes a model)"
    return Check("free space", ok, f"{free_mb} MB free under {path}", "" if ok else fix)


def _model(settings: Settings) -> Check:
    from mongars_edge.errors import MongarsError
    from mongars_edge.inference.manager import model_spec
    from mongars_edge.inference.models import ModelStore

    if settings.model == "off":
        return Check("chat model", True, "disabled (model = off)")
    spec = model_spec(settings)
    try:
        model_id, path = ModelStore(settings.resolved_data_dir()).resolve(spec)
    except MongarsError as exc:
        fix = f"mongars-edge models pull {spec}, or --model"
        return Check("chat model", False, str(exc), fix)
    return Check("chat model", True, f"{model_id} at {path}")


def _vector_extension() -> Check:
    try:
        import sqlean
        import sqlite_vec

        conn = sqlean.connect(":memory:")
        try:
            conn.enable_load_extension(True)
            conn.load_extension(sqlite_vec.loadable_path())
            (version,) = conn.execute("select vec_version()").fetchone()
        finally:
            conn.close()
    except Exception as exc:  # any failure here means recall cannot work
        return Check("sqlite-vec", False, f"{type(exc).__name__}: {exc}", "reinstall the package")
    return Check("sqlite-vec", True, f"loads ({version})")


def _package(name: str, what: str, extra: str) -> Check:
    found = importlib.util.find_spec(name) is not None
    fix = f"pip install 'mongars-edge[{extra}]'"
    return Check(what, found, "installed" if found else "missing", "" if found else fix, False)


def _espeak() -> Check:
    found = shutil.which("espeak-ng")
    fix = "apt-get install espeak-ng (French speech until a French Piper voice is installed)"
    return Check("espeak-ng", bool(found), found or "not on PATH", "" if found else fix, False)


def _port(settings: Settings) -> Check:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1.0)
        in_use = sock.connect_ex((host, settings.port)) == 0
    detail = f"{host}:{settings.port} " + ("answers (a daemon is running?)" if in_use else "free")
    return Check("HTTP port", True, detail)


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    _data_dir,
    _free_space,
    _model,
    lambda _s: _vector_extension(),
    lambda _s: _package("piper", "Piper TTS", "speech"),
    lambda _s: _package("faster_whisper", "Whisper STT", "stt"),
    lambda _s: _espeak(),
    _port,
)


def run_checks(settings: Settings) -> list[Check]:
    """Run every check; a check that crashes is itself reported as a failed check."""
    results: list[Check] = []
    for check in CHECKS:
        try:
            results.append(check(settings))
        except Exception as exc:
            log.debug("doctor check crashed", exc_info=True)
            results.append(Check(getattr(check, "__name__", "check"), False, repr(exc)))
    return results


def healthy(results: list[Check]) -> bool:
    """True when every required check passed."""
    return all(c.ok or not c.required for c in results)
