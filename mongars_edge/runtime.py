"""Runtime: the one owner of every service; opens them in order and closes them in reverse."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from mongars_edge import __version__
from mongars_edge.datadir import DataDir, make_dir
from mongars_edge.errors import UnavailableError
from mongars_edge.hardware.pi import board_problems
from mongars_edge.hardware.probe import HardwareFacts, probe
from mongars_edge.hardware.tuning import TuningProfile
from mongars_edge.inference.manager import load_profile
from mongars_edge.inference.onnx import TENSORRT
from mongars_edge.inference.onnx_report import OnnxReport, installed_providers, report
from mongars_edge.settings import Settings
from mongars_edge.telemetry import Watchdog, appliance_problems

if TYPE_CHECKING:
    from mongars_edge.chat.pipeline import ChatPipeline
    from mongars_edge.inference.engine import Engine
    from mongars_edge.inference.local import LocalEngine
    from mongars_edge.inference.manager import ModelManager
    from mongars_edge.memory.embed import ThreadedEmbedder
    from mongars_edge.memory.store import MemoryStore
    from mongars_edge.mesh.service import MeshService
    from mongars_edge.speech.stt import SpeechToText
    from mongars_edge.speech.tts import TextToSpeech
    from mongars_edge.speech.wyoming import WyomingServer
    from mongars_edge.split.select import Splitter
    from mongars_edge.web.auth import Accounts

log = logging.getLogger(__name__)

# A watchdog limit for the embedding model's load (see Watchdog.widened): ~1 s on a Pi 5, more
# than the usual 30 s under qemu's full-system emulation of the Pi image.
_EMBEDDER_LOAD_S = 600.0
# The same while the voices load when they may build TensorRT engines (first start only): NVIDIA
# gives no figure; minutes per voice on an Orin is what others report. Not measured here.
_TRT_BUILD_S = 1800.0


class Runtime:
    """Async context manager holding the box's services for one process lifetime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.version = __version__
        self.data = DataDir(settings.resolved_data_dir())
        self.data_dir: Path = self.data.root
        self.started_at = time.monotonic()
        self._facts: HardwareFacts | None = None
        self._profile: TuningProfile | None = None
        self._embedder: ThreadedEmbedder | None = None
        # The ONNX providers installed and the package that has them, read once at start.
        self._onnx_installed: tuple[tuple[str, ...], str | None] = ((), None)
        self._stack = contextlib.AsyncExitStack()
        # Service-level problems shown on /health (probe warnings live in facts).
        self.problems: list[str] = []
        # systemd watchdog; the inference worker calls watchdog.beat_inference() per step.
        self.watchdog = Watchdog.from_environ()
        # The local llama.cpp engine, whichever model is loaded behind it (None when the `model`
        # setting is "off"); `models` chooses, pulls and switches that model.
        self.engine: LocalEngine | None = None
        self.models: ModelManager | None = None
        self._splitter: Splitter | None = None  # the models' splitter, given the mesh's offers
        # The mesh router (an Engine that may run a request on a peer); None without a mesh.
        self.router: Engine | None = None
        # The peer mesh service (None without a mesh); `mongars-edge peers` reads its state.
        self.mesh: MeshService | None = None
        # Opened by _open_chat: the database, web accounts and the chat pipeline.
        self.memory: MemoryStore
        self.accounts: Accounts
        self.chat: ChatPipeline
        # Speech services (None when off or not installed), as speech.service.open_speech opened
        # them.
        self.speech: TextToSpeech | None = None
        self.stt: SpeechToText | None = None
        self.wyoming: WyomingServer | None = None

    @property
    def facts(self) -> HardwareFacts:
        if self._facts is None:
            raise RuntimeError("Runtime is not open")
        return self._facts

    @property
    def profile(self) -> TuningProfile:
        if self._profile is None:
            raise RuntimeError("Runtime is not open")
        return self._profile

    def chat_engine(self) -> Engine:
        """The engine chat requests go to: the mesh router when there is one, else local."""
        engine: Engine | None = self.router or self.engine
        if engine is None:
            raise UnavailableError("no chat model is loaded on this box (the model setting is off)")
        return engine

    def _persona(self, model_id: str) -> bool:
        """Whether the box's persona goes into this model's prompts (the `persona` setting;
        auto: the catalog's word)."""
        if self.settings.persona != "auto":
            return self.settings.persona == "on"
        return self.models is None or self.models.persona(model_id)

    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    async def __aenter__(self) -> Self:
        make_dir(self.data_dir)
        try:
            await self._open_services()
        except BaseException:
            # A service that fails to open must not leave the ones before it running.
            await self._stack.aclose()
            raise
        return self

    async def _open_services(self) -> None:
        # Pings start first so a slow model load is not mistaken for a hang.
        await self._stack.enter_async_context(self.watchdog.running())
        self.problems += await asyncio.to_thread(appliance_problems, self.data_dir)
        self._facts = await asyncio.to_thread(probe, self.settings.sysroot, self.data_dir)
        self.problems += await asyncio.to_thread(
            board_problems,
            Path(self.settings.sysroot),
            self._facts.board,
            self._facts.board_revision,
        )
        self._profile = load_profile(self._facts, self.data_dir)
        self._onnx_installed = await asyncio.to_thread(installed_providers)
        log.info(
            "hardware probed",
            extra={"board": self._facts.board, "profile": json.dumps(self._profile.summary())},
        )
        # The embedding model loads first, with nothing else on the loop: its load holds the
        # GIL in stretches (see ThreadedEmbedder.wait_loaded), which would stall other startup
        # work, and the watchdog's pings stall with it (hence the wider limit meanwhile).
        async with self.watchdog.widened(_EMBEDDER_LOAD_S):
            self._embedder = await asyncio.to_thread(
                _loaded_embedder, self.settings.embed_model, self._profile.onnx_providers
            )
        self._stack.push_async_callback(self._embedder.close)

        await self._open_models()
        if self.settings.mesh and self.engine is not None:
            from mongars_edge.mesh.service import open_mesh

            mesh, self.router = await self._stack.enter_async_context(
                open_mesh(self.settings, self.data_dir, self.engine)
            )
            self.mesh = mesh
            wanted = self.settings.mesh_port
            if wanted and mesh.port != wanted:
                # Said on /health, not only in the log: a second box on the same machine is
                # the usual cause, and `pair --join --peer` needs the port it really got.
                self.problems.append(
                    f"mesh port {wanted} is taken (another box on this machine?); the mesh "
                    f"listens on {mesh.port} instead: give each box its own mesh_port "
                    "(serve --mesh-port)"
                )
            if mesh.split_problem:
                self.problems.append(mesh.split_problem)
            if self._splitter is not None:
                from mongars_edge.split.select import mesh_offers

                # Paired boxes offering memory, reached through the mesh's tunnel: a model over
                # this box's budget runs split across them (tried again as one starts offering).
                self._splitter.sources.append(
                    mesh_offers(mesh.split_members, mesh.rpc_endpoint, mesh.llama_build)
                )
        await self._open_chat()

    async def _open_models(self) -> None:
        """The local engine and the model manager that loads the chosen model into it."""
        from mongars_edge.inference.local import LocalEngine
        from mongars_edge.inference.manager import OFF, ModelManager

        if self.settings.model == OFF:
            log.info("inference disabled (model = off)")
            return
        local = LocalEngine()
        self._stack.push_async_callback(local.close)
        self.models = ModelManager(
            self.settings, self.profile, self.facts, self.data_dir, local, heartbeat=self.watchdog
        )
        self._stack.push_async_callback(self.models.close)
        if self.settings.split_workers or self.settings.mesh:
            from mongars_edge.split.select import Splitter, direct_offers

            # The split_workers setting's endpoints now; the mesh's offers once it opens.
            workers = self.settings.split_workers
            self._splitter = Splitter([direct_offers(workers)] if workers else [])
            self.models.splitter = self._splitter
        await self.models.start()
        # A box waiting for its model to run split holds the empty engine: the mesh opens (the
        # offers it waits for come through it) and the model answers once it is loaded.
        self.engine = local if local.loaded or self.models.wanted else None

    def health_problems(self) -> list[str]:
        """Everything /health lists: the box's own problems, the ONNX GPU path's, the model's."""
        model = self.models.problems() if self.models is not None else []
        split = self.split_placement() or {}
        lost = [str(split["problem"])] if split.get("problem") else []
        return [*self.problems, *self.onnx_report().problems(), *model, *lost]

    def split_placement(self) -> dict[str, object] | None:
        """Which layers of the chat model live where, when it is split across boxes."""
        if self.engine is None or not self.engine.loaded:
            return None
        placement = getattr(self.engine.engine, "placement", None)
        return placement() if callable(placement) else None

    def onnx_report(self) -> OnnxReport:
        """The profile's ONNX providers against those installed, and what each model runs on."""
        present, package = self._onnx_installed
        facts = self.facts
        return report(
            self.profile.onnx_providers,
            jetson=facts.board.startswith("jetson") or facts.l4t_release is not None,
            tensorrt_lib=facts.tensorrt,
            present=present,
            package=package,
        )

    def speech_summary(self) -> dict[str, object]:
        """Which voice speaks each language and which model hears (for /health)."""
        voices: dict[str, str] = {}
        notes: list[str] = []
        if self.speech is not None:
            for info in self.speech.voices():
                voices.setdefault(info.language, f"{info.engine}:{info.name}")
            if voices.get("fr", "").startswith("espeak-ng"):
                notes.append(
                    "French is spoken by espeak-ng until a French Piper voice is installed "
                    "(`mongars-edge voices pull fr_FR-siwis-medium`)"
                )
        return {
            "voices": voices,
            "stt": self.stt.name if self.stt is not None else None,
            "notes": notes,
        }

    async def _open_chat(self) -> None:
        """Memory store, accounts (setup code, local admin token) and the chat pipeline."""
        # First imports take ~0.5 s (numpy, starlette): not on the event loop.
        await asyncio.to_thread(_import_chat_modules)
        from mongars_edge.chat.pipeline import ChatPipeline
        from mongars_edge.memory.store import MemoryStore
        from mongars_edge.web.auth import Accounts

        embedder = self._embedder
        assert embedder is not None  # made and loaded in _open_services
        self.memory = await self._stack.enter_async_context(
            MemoryStore.open(self.data.database, embedder)
        )
        self.accounts = await self._stack.enter_async_context(
            Accounts.open(self.memory, self.settings, self.data_dir)
        )
        self.chat = await self._stack.enter_async_context(
            ChatPipeline.open(
                self.chat_engine,
                self.memory,
                self.settings,
                self.data_dir,
                local=self.engine,
                sampling_defaults=self.models.sampling_defaults if self.models else None,
                persona=self._persona,
            )
        )
        from mongars_edge.speech.service import open_speech, voice_agent

        agent = voice_agent(self.settings, self.chat, self.models)
        window = trt_build_window(self.profile.onnx_providers, self._onnx_installed[0])
        async with self.watchdog.widened(window) if window else contextlib.nullcontext():
            speech = await self._stack.enter_async_context(
                open_speech(self.settings, self.profile, self.facts, self.data, self.models, agent)
            )
        self.speech, self.stt, self.wyoming = speech.tts, speech.stt, speech.wyoming
        self.problems += speech.problems
        # Closed before the services themselves: nobody is handed a closing voice.
        self._stack.callback(self._forget_speech)

    def _forget_speech(self) -> None:
        self.speech = self.stt = self.wyoming = None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()


def trt_build_window(wanted: tuple[str, ...], present: tuple[str, ...]) -> float:
    """The watchdog limit while voices load: wide when they may build TensorRT engines, else 0.

    The engine is built in ONNX Runtime's native code, which may hold the GIL for minutes: the
    loop's pings stop, and systemd would kill the service before the engine is cached, again
    at every restart."""
    return _TRT_BUILD_S if TENSORRT in wanted and TENSORRT in present else 0.0


def _import_chat_modules() -> None:
    import mongars_edge.chat.pipeline
    import mongars_edge.memory.embed
    import mongars_edge.memory.store
    import mongars_edge.web.auth  # noqa: F401


def _loaded_embedder(name: str, providers: tuple[str, ...]) -> ThreadedEmbedder:
    from mongars_edge.memory.embed import create_embedder

    embedder = create_embedder(name, providers=providers)
    embedder.wait_loaded()
    return embedder
