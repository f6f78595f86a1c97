"""Which chat model the box runs: chosen at start, pulled in the background, switched live.

At start the `model` setting decides; `auto` takes the tuning profile's choice (the largest
catalog model that fits). A chosen model that is not on the box yet does not keep the box
silent: the embedded tiny model answers, `/health` says so, and the chosen one is pulled in the
background and loaded when it is whole. Admins pull, load and remove models at runtime
(`/api/models/*`); a model too big for this box's RAM budget is refused with the numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from mongars_edge.backoff import Backoff
from mongars_edge.datadir import DataDir
from mongars_edge.errors import InvalidRequestError, MongarsError
from mongars_edge.hardware.tuning import TuningProfile, memory_budget_mb, model_need_mb, profile_for
from mongars_edge.inference.catalog import auto_options
from mongars_edge.inference.errors import (
    DownloadCancelledError,
    ModelNotFoundError,
    ModelTooBigError,
)
from mongars_edge.inference.models import DEFAULT_MODEL, ModelStore

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from mongars_edge.hardware.probe import HardwareFacts
    from mongars_edge.inference.catalog import CatalogEntry
    from mongars_edge.inference.llama import EngineConfig
    from mongars_edge.inference.local import HeldEngine, LocalEngine
    from mongars_edge.inference.worker import Heartbeat
    from mongars_edge.settings import Settings

log = logging.getLogger(__name__)

AUTO: Final = "auto"
OFF: Final = "off"

#: How long a split that keeps failing with the same workers waits at most between tries.
_SPLIT_RETRY_CAP_S: Final = 600.0


class Splitter(Protocol):
    """Runs a model too big for this box across workers that offer the rest. The split
    package provides it (split/select.py); the Runtime hands it in."""

    async def __call__(
        self, config: EngineConfig, need_mb: int, budget_mb: int
    ) -> AbstractAsyncContextManager[HeldEngine] | None:
        """An opener of the model split (given the MiB it needs and this box holds), or None
        when no worker offers memory."""
        ...

    async def offering(self) -> frozenset[str]:
        """Who offers memory now: a newcomer is worth trying again at once."""
        ...


@dataclass
class PullState:
    """A download the box runs in the background (one per model)."""

    id: str
    done: int = 0
    total: int = 0
    state: str = "running"  # running, done, failed, cancelled
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    load_when_done: bool = False
    # Run once the model is whole (e.g. the speech service switching to it).
    then: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    # What waits for it meanwhile, shown on /health until the download is done.
    because: str = ""
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "done_bytes": self.done,
            "total_bytes": self.total,
            "percent": round(100 * self.done / self.total, 1) if self.total else None,
            "error": self.error,
        }


class ModelManager:
    """Owns the choice of chat model for one Runtime (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        profile: TuningProfile,
        facts: HardwareFacts,
        data_dir: Path,
        local: LocalEngine,
        *,
        heartbeat: Heartbeat | None = None,
        store: ModelStore | None = None,
    ) -> None:
        self.settings = settings
        self.profile = profile
        self.facts = facts
        self.local = local
        self.store = store or ModelStore(data_dir, pypi_index=settings.pypi_index)
        self._adapters = data_dir
        self._heartbeat = heartbeat
        self.pulls: dict[str, PullState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.wanted = ""  # the model the settings chose; "" when it is loaded or off
        # Opens a model over this box's budget split across workers (None: refuse it).
        self.splitter: Splitter | None = None
        self.split_retry_s = 30.0  # the first wait; doubled after each failed try
        self.split_poll_s = 5.0  # how often the offers are looked at meanwhile
        self.split_problem = ""  # why the chosen model is not split yet (shown on /health)
        # Told when the problems shown on /health change (the Runtime lists them).
        self.on_change: Callable[[], None] = lambda: None

    # -- start and stop --------------------------------------------------------------------

    def chosen(self) -> str:
        """The model the settings ask for: an id, a GGUF path, or the profile's choice."""
        return model_spec(self.settings, self.profile)

    async def start(self) -> None:
        """Load the chosen model, or the tiny one while the chosen one downloads."""
        spec = self.chosen()
        if spec == OFF:
            log.info("inference disabled (model = off)")
            return
        entry = self.store.catalog.get(spec)
        installed = await asyncio.to_thread(self._installed, spec)
        if installed or entry is None or not (entry.parts or entry.url):
            try:
                await self.load(spec)  # not pullable: load (or fail) as asked
            except ModelTooBigError as exc:
                if self.splitter is None:
                    raise
                # Splitting may work later (a worker back, a peer paired): the tiny one answers
                # meanwhile, or nothing when even the tiny one is over this box's budget.
                await self._wait_for_split(spec, exc)
            return
        log.warning(
            "the chosen model %s is not on this box yet: the tiny %s answers while it "
            "downloads (see /health)",
            spec,
            DEFAULT_MODEL,
        )
        await self.load(DEFAULT_MODEL)
        self.wanted = spec
        self.pull(spec, load_when_done=True)

    async def _wait_for_split(self, spec: str, why: ModelTooBigError) -> None:
        """Serve the tiny model (if it fits) while `spec` is tried split (see _retry_split)."""
        self.wanted, self.split_problem = spec, str(why)
        if spec != DEFAULT_MODEL:
            try:
                await self.load(DEFAULT_MODEL)
                log.warning("%s: the tiny %s answers meanwhile (see /health)", why, DEFAULT_MODEL)
            except ModelTooBigError:
                pass
        if not self.local.loaded:
            # A box paired with boxes that offer memory splits it once their offers arrive.
            log.warning("%s: no model answers until it runs split (see /health)", why)
        task = asyncio.ensure_future(self._retry_split(spec))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for state in self.pulls.values():
            state.cancel.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def problems(self) -> list[str]:
        """What /health shows about the models: a chosen one still downloading, or failed."""
        out = []
        for state in self.pulls.values():
            if state.because and state.state != "done":
                out.append(f"{state.because}{_progress(state, state.id)}")
        if self.wanted and self.split_problem:
            meanwhile = (
                f"{self.local.info.id} answers meanwhile"
                if self.local.loaded
                else "no model answers meanwhile (even the tiny one is over the budget)"
            )
            out.append(
                f"the chosen model {self.wanted} is not running yet ({self.split_problem}): "
                f"{meanwhile}; splitting is tried again as soon as another box offers memory, "
                f"and every {self.split_retry_s:g} s to {_SPLIT_RETRY_CAP_S / 60:g} min"
            )
        elif self.wanted and self.local.loaded:
            how = _progress(self.pulls.get(self.wanted), self.wanted)
            out.append(
                f"the chosen model {self.wanted} is not installed yet: "
                f"{self.local.info.id} answers meanwhile{how}"
            )
        return out

    # -- load, pull, remove ----------------------------------------------------------------

    def _installed(self, spec: str) -> bool:
        try:
            self.store.resolve(spec)
        except ModelNotFoundError:
            return False
        return True

    def budget_mb(self) -> int:
        """RAM the chat model may take here: the RAM's budget, bounded by `model_budget_mb`."""
        ram = memory_budget_mb(self.facts)
        return min(ram, self.settings.model_budget_mb) if self.settings.model_budget_mb else ram

    def need_mb(self, model_id: str, path: Path) -> int:
        """RAM the model needs with this box's context and parallel sequences."""
        entry = self.store.catalog.get(model_id)
        tier = entry.tier if entry is not None else "medium"
        size_mb = (entry.size_bytes if entry and entry.size_bytes else _file_size(path)) >> 20
        ctx = self.settings.ctx_size or self.profile.ctx_size
        parallel = self.settings.n_parallel or self.profile.n_parallel
        return model_need_mb(tier, size_mb, ctx, parallel)

    def check_fits(self, model_id: str, path: Path) -> None:
        """ModelTooBigError when the model would not fit this box's RAM budget."""
        need, budget = self.need_mb(model_id, path), self.budget_mb()
        if need > budget:
            ctx = self.settings.ctx_size or self.profile.ctx_size
            parallel = self.settings.n_parallel or self.profile.n_parallel
            bounded = self.settings.model_budget_mb == budget
            raise ModelTooBigError(
                f"{model_id} needs ~{need} MiB (its weights and a {ctx}-token "
                f"context for {parallel} conversations), and this box's budget is {budget} MiB"
                f"{' (the model_budget_mb setting)' if bounded else ''} of its "
                f"{self.facts.mem_total_mb} MiB RAM: choose a smaller model, or pair a box "
                "that offers memory to split it"
            )

    async def load(self, spec: str) -> str:
        """Load a model (catalog id or GGUF path) and make it the one that answers."""
        from mongars_edge.inference.llama import EngineConfig, LlamaEngine

        if spec == OFF:
            raise InvalidRequestError("`off` is not a model")
        model_id, path = await asyncio.to_thread(self.store.resolve, spec)
        entry = self.store.catalog.get(model_id)
        if entry is not None and entry.kind != "chat":
            raise InvalidRequestError(f"{model_id} is a {entry.kind} model, not a chat model")
        config = EngineConfig.from_settings(self.settings, self.profile, path, model_id)
        try:
            await asyncio.to_thread(self.check_fits, model_id, path)
        except ModelTooBigError as too_big:
            try:
                split = await self._split(config, path)
                if split is None:
                    raise
                await self.local.swap(split)
            except ModelTooBigError:
                raise
            except MongarsError as exc:  # the workers answered badly, or not at all
                raise ModelTooBigError(f"{too_big}; splitting it failed: {exc}") from None
        else:
            from mongars_edge.inference.adapters import AdapterStore

            adapters = AdapterStore(self._adapters)
            await self.local.swap(
                LlamaEngine.open(config, adapters=adapters.path, heartbeat=self._heartbeat)
            )
        if self.wanted == model_id:
            self.wanted = ""
        self.on_change()
        return model_id

    async def _split(
        self, config: EngineConfig, path: Path
    ) -> AbstractAsyncContextManager[HeldEngine] | None:
        """The model split across workers that offer memory, when some do."""
        if self.splitter is None:
            return None
        need = await asyncio.to_thread(self.need_mb, config.model_id, path)
        return await self.splitter(config, need, self.budget_mb())

    async def _retry_split(self, spec: str) -> None:
        """Try the chosen model split again until it runs, or another model was chosen: at
        once when a box starts offering memory, else after split_retry_s, doubled up to
        _SPLIT_RETRY_CAP_S while the same workers keep failing (each try sends them weights)."""
        backoff = Backoff(self.split_retry_s, max(self.split_retry_s, _SPLIT_RETRY_CAP_S))
        tried = await self._offering()
        while self.wanted == spec:
            await self._wait_for_offers(backoff.next(), tried)
            if self.wanted != spec or (self.local.loaded and self.local.info.id != DEFAULT_MODEL):
                break  # an admin chose another model meanwhile: theirs stays
            tried = await self._offering()
            try:
                await self.load(spec)
            except ModelTooBigError as exc:
                if str(exc) != self.split_problem:  # each new reason once (the rest: /health)
                    log.warning("the chosen model %s does not run split yet: %s", spec, exc)
                self.split_problem = str(exc)
                continue
            self.wanted = self.split_problem = ""
            log.info("the chosen model %s now runs split", spec)
            self.on_change()
            return
        self.split_problem = ""

    async def _offering(self) -> frozenset[str]:
        return await self.splitter.offering() if self.splitter is not None else frozenset()

    async def _wait_for_offers(self, delay: float, tried: frozenset[str]) -> None:
        """Sleep `delay` s, cut short when a box not among `tried` offers memory."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(left, self.split_poll_s))
            if not await self._offering() <= tried:
                return

    def pull(
        self,
        model_id: str,
        *,
        load_when_done: bool = False,
        then: Callable[[], Awaitable[None]] | None = None,
        because: str = "",
    ) -> PullState:
        """Start (or join) a background download of a catalog model. `then` runs once it is
        whole; `because` says on /health what waits for it meanwhile."""
        entry = self.store.entry(model_id)  # ModelNotFoundError names the known ones
        running = self.pulls.get(model_id)
        if running is not None and running.state == "running":
            running.load_when_done |= load_when_done
            return running
        if entry.embedded:
            raise InvalidRequestError(f"{model_id} ships with the box: there is nothing to pull")
        state = PullState(
            model_id,
            total=entry.size_bytes,
            load_when_done=load_when_done,
            then=then,
            because=because,
        )
        self.pulls[model_id] = state
        task = asyncio.ensure_future(self._run_pull(state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return state

    async def _run_pull(self, state: PullState) -> None:
        def progress(done: int, total: int) -> None:
            state.done, state.total = done, total or state.total

        try:
            await asyncio.to_thread(self.store.pull, state.id, progress, state.cancel)
        except DownloadCancelledError:
            state.state = "cancelled"
            return
        except Exception as exc:  # every failure is reported on the state, and /health
            state.state, state.error = "failed", str(exc)
            log.warning("pull of %s failed: %s", state.id, exc)
            self.on_change()
            return
        state.state = "done"
        state.done = state.total
        log.info("model %s pulled", state.id)
        try:
            if state.load_when_done and (not self.wanted or self.wanted == state.id):
                await self.load(state.id)
            if state.then is not None:
                await state.then()
        except Exception as exc:  # the box keeps serving what it has
            state.state = "failed"
            state.error = f"downloaded, but it could not be loaded: {exc}"
            log.warning("cannot load %s after pulling it: %s", state.id, exc)
        self.on_change()

    def cancel_pull(self, model_id: str) -> None:
        state = self.pulls.get(model_id)
        if state is None or state.state != "running":
            raise ModelNotFoundError(f"no download of {model_id!r} is running")
        state.cancel.set()

    async def remove(self, model_id: str) -> None:
        """Delete a downloaded model; the one answering now cannot be removed."""
        if self.local.loaded and self.local.info.id == model_id:
            raise InvalidRequestError(
                f"{model_id} is the model answering now: load another one before removing it"
            )
        state = self.pulls.get(model_id)
        if state is not None and state.state == "running":
            raise InvalidRequestError(f"{model_id} is downloading: cancel the download first")
        await asyncio.to_thread(self.store.remove, model_id)
        self.pulls.pop(model_id, None)

    # -- what the API and the page show ----------------------------------------------------

    def entries(self) -> list[CatalogEntry]:
        return [e for e in self.store.catalog.values() if e.kind == "chat"]

    def installed_chat_models(self) -> list[str]:
        """Ids of the chat models on this box (the catalog's and stray GGUF files)."""
        return [
            m.id
            for m in self.store.list()
            if m.installed and (m.entry is None or m.entry.kind == "chat")
        ]

    def listing(self) -> list[dict[str, Any]]:
        """Every chat model of the catalog and every stray GGUF, with its state on this box."""
        from mongars_edge.inference.models import describe

        loaded = self.local.info.id if self.local.loaded else None
        rows = []
        for item in self.store.list():
            if item.entry is not None and item.entry.kind != "chat":
                continue
            row = describe(item)
            row["loaded"] = item.id == loaded
            row["recommended"] = item.id == self.profile.model
            if item.id in self.pulls:
                row["pull"] = self.pulls[item.id].to_dict()
            rows.append(row)
        return rows

    def persona(self, model_id: str) -> bool:
        """Whether the box's persona goes into this model's prompts (the catalog's `persona`)."""
        entry = self.store.catalog.get(model_id)
        return entry is None or entry.persona

    def sampling_defaults(self, model_id: str) -> dict[str, float | int]:
        """The model's own generation settings from the catalog (empty when it has none)."""
        entry = self.store.catalog.get(model_id)
        if entry is None or entry.sampling is None:
            return {}
        return entry.sampling.overrides()


def _progress(state: PullState | None, model_id: str) -> str:
    if state is None:
        return ""
    if state.state == "running" and state.total and not state.cancel.is_set():
        # (a cancelled one runs on until its thread sees the flag: no stale percentage meanwhile)
        return f" ({100 * state.done / state.total:.0f}% downloaded)"
    if state.error:
        return (
            f" (the download failed: {state.error}; retry from the page or with "
            f"`mongars-edge models pull {model_id}`)"
        )
    return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def load_profile(facts: HardwareFacts, data_dir: Path) -> TuningProfile:
    """The measured profile from `mongars-edge bench` when present, else the heuristic one."""
    try:
        options = auto_options()
    except MongarsError as exc:  # no catalog installed: the profile names no model
        log.warning("%s", exc)
        options = []
    heuristic = profile_for(facts, options)
    path = DataDir(data_dir).tuning_profile
    if not path.is_file():
        return heuristic
    try:
        measured = TuningProfile.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable measured profile %s: %s", path, exc)
        return heuristic
    if not measured.model:  # written before the profile chose a model
        measured = dataclasses.replace(
            measured,
            model=heuristic.model,
            reasons={**measured.reasons, "model": heuristic.reasons["model"]},
        )
    return measured


def model_spec(settings: Settings, profile: TuningProfile | None = None) -> str:
    """The model the settings choose: `auto` asks the tuning profile (probed when not given)."""
    if settings.model != AUTO:
        return settings.model
    if profile is None:
        from mongars_edge.hardware.probe import probe

        data_dir = settings.resolved_data_dir()
        profile = load_profile(probe(settings.sysroot, data_dir, quiet=True), data_dir)
    return profile.model or DEFAULT_MODEL
