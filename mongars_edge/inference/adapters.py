"""LoRA adapters stored by content: `data_dir/adapters/<sha256>.gguf` plus a small JSON card.

`add` checks the file is a LoRA GGUF for the base model's architecture, then lets llama.cpp
load it against the base model (which checks every tensor shape) before storing it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mongars_edge.datadir import DataDir
from mongars_edge.inference.errors import AdapterError, AdapterNotFoundError

_ID_LEN = 12


@dataclass(frozen=True)
class Adapter:
    """One stored adapter; `id` is the first 12 hex digits of its sha256."""

    id: str
    sha256: str
    name: str
    architecture: str
    base_model: str
    size_bytes: int
    added_at: float


def read_lora_metadata(path: Path) -> dict[str, str]:
    """general.type, adapter.type and general.architecture of a GGUF, or AdapterError."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise AdapterError(f"{path.name} is not a readable GGUF file ({exc})") from None
    out: dict[str, str] = {}
    for key in ("general.type", "adapter.type", "general.architecture", "general.name"):
        field = reader.fields.get(key)
        if field is not None:
            out[key] = str(field.contents())
    return out


class AdapterStore:
    """The adapters of this box."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = DataDir(data_dir).adapters

    def list(self) -> list[Adapter]:
        if not self.dir.is_dir():
            return []
        out = []
        for card in sorted(self.dir.glob("*.json")):
            try:
                out.append(Adapter(**json.loads(card.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue  # a half-written card: its adapter is not listed
        return sorted(out, key=lambda a: a.added_at)

    def get(self, ref: str) -> Adapter:
        """By id, sha256 prefix (at least 6 digits) or name."""
        adapters = self.list()
        matches = [a for a in adapters if a.name == ref]
        if not matches and len(ref) >= 6:
            matches = [a for a in adapters if a.sha256.startswith(ref.lower())]
        if not matches:
            raise AdapterNotFoundError(
                f"no adapter {ref!r} on this box (see `mongars-edge adapters list`)"
            )
        if len(matches) > 1:
            raise AdapterNotFoundError(f"{ref!r} names several adapters; use its id")
        return matches[0]

    def path(self, ref: str) -> Path:
        """The file of an adapter: the engine's AdapterResolver."""
        return self.dir / f"{self.get(ref).sha256}.gguf"

    def add(self, source: Path, base_model: Path, name: str | None = None) -> Adapter:
        """Validate `source` against `base_model` and store it; AdapterError if it does not fit."""
        if not source.is_file():
            raise AdapterNotFoundError(f"adapter file {source} does not exist")
        meta = read_lora_metadata(source)
        if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
            raise AdapterError(f"{source.name} is not a LoRA adapter GGUF")
        arch = _check_against_base(source, base_model, meta.get("general.architecture", ""))
        digest = _sha256(source)
        name = name or meta.get("general.name") or source.stem
        if any(a.name == name and a.sha256 != digest for a in self.list()):
            raise AdapterError(f"another adapter is already called {name!r}; choose --name")
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"{digest}.gguf"
        if not final.exists():
            tmp = final.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, final)
        adapter = Adapter(
            id=digest[:_ID_LEN],
            sha256=digest,
            name=name,
            architecture=arch,
            base_model=base_model.name,
            size_bytes=final.stat().st_size,
            added_at=time.time(),
        )
        card = self.dir / f"{digest}.json"
        tmp_card = card.with_suffix(".json.tmp")
        tmp_card.write_text(json.dumps(asdict(adapter), indent=2), encoding="utf-8")
        os.replace(tmp_card, card)
        return adapter

    def remove(self, ref: str) -> Adapter:
        adapter = self.get(ref)
        (self.dir / f"{adapter.sha256}.json").unlink(missing_ok=True)
        (self.dir / f"{adapter.sha256}.gguf").unlink(missing_ok=True)
        return adapter


def _check_against_base(source: Path, base_model: Path, arch: str) -> str:
    from mongars_edge.inference import lowlevel

    model = lowlevel.load_model(base_model, require_template=False)
    try:
        if arch != model.architecture:
            raise AdapterError(
                f"{source.name} is for the {arch or 'unknown'} architecture; "
                f"the base model is {model.architecture}"
            )
        import llama_cpp.llama_cpp as L

        lowlevel.take_recent_errors()
        lora = L.llama_adapter_lora_init(model.ptr, str(source).encode())
        if not lora:
            why = lowlevel.take_recent_errors() or "unknown reason"
            raise AdapterError(f"{source.name} does not fit the base model ({why})")
        L.llama_adapter_lora_free(lora)
        return model.architecture
    finally:
        model.free()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()
