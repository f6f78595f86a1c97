"""Prometheus metrics of the web edge and the chat pipeline (one registry per app)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mongars_edge.inference.engine import TokenEvent
from mongars_edge.web.auth import require_user

if TYPE_CHECKING:
    from mongars_edge.runtime import Runtime

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_RECALL_BUCKETS: Final = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class _EngineCollector(Collector):
    """Queue depth, active sequences and tokens/s, read from the engine at scrape time."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        engine = self.runtime.router or self.runtime.engine
        if engine is None:
            return
        load = engine.load()
        for name, doc, value in (
            ("mongars_queue_depth", "Requests waiting for an inference slot.", load.queue_depth),
            ("mongars_active_sequences", "Sequences being decoded now.", load.active),
            ("mongars_parallel_slots", "Sequences the engine decodes together.", load.n_parallel),
            (
                "mongars_generation_tokens_per_second",
                "Recent generation speed of the engine.",
                load.generation_tok_s,
            ),
            (
                "mongars_prompt_tokens_per_second",
                "Recent prompt processing speed of the engine.",
                load.prompt_tok_s,
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=float(value))


class Metrics:
    """Counters and histograms; also the chat pipeline's observer."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "mongars_http_requests", "HTTP requests.", ["method", "route", "status"], registry=reg
        )
        self.errors = Counter("mongars_errors", "Errors answered, by kind.", ["kind"], registry=reg)
        self.ttft = Histogram(
            "mongars_time_to_first_token_seconds",
            "From the chat request reaching the pipeline to the first token.",
            buckets=_TTFT_BUCKETS,
            registry=reg,
        )
        self.recall = Histogram(
            "mongars_recall_seconds",
            "Memory recall time per chat turn.",
            buckets=_RECALL_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            "mongars_generated_tokens", "Tokens generated for chat replies.", registry=reg
        )
        self.turns = Counter(
            "mongars_chat_turns", "Chat turns, by how they ended.", ["status"], registry=reg
        )
        reg.register(_EngineCollector(runtime))

    # PipelineObserver
    def recall_done(self, seconds: float) -> None:
        self.recall.observe(seconds)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, event: TokenEvent | None, status: str) -> None:
        self.turns.labels(status).inc()
        if event is not None and event.usage is not None:
            self.tokens.inc(event.usage.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware counting requests by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope.get("method", ""), template, str(status)).inc()


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format; an administrator's token or session (never open to the LAN)."""
    await require_user(request, admin=True)
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)
