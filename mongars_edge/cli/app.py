"""`serve`, `probe` and `tui`: the appliance itself and what it tells about this box."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mongars_edge.cli.base import F, common_options, make_settings
from mongars_edge.errors import MongarsError
from mongars_edge.localbox import local_url, remove_marker, write_marker
from mongars_edge.settings import Settings, describe

if TYPE_CHECKING:
    from mongars_edge.hardware.probe import HardwareFacts

log = logging.getLogger(__name__)


# Settings whose `serve` flags are written out above; every other setting gets a generated one.
_HAND_MADE_FLAGS = frozenset(
    {"data_dir", "log_level", "log_format", "host", "port", "model", "mesh", "speech"}
)


def _setting_options(func: F) -> F:
    """One `serve` flag per remaining setting (`mesh_port` -> `--mesh-port`), help from Settings."""
    types: dict[str, Any] = {"int": int, "float": float, "Path": click.Path(path_type=Path)}
    for item in reversed(describe()):
        name = item["name"]
        if name in _HAND_MADE_FLAGS:
            continue
        kind = str(Settings.__dataclass_fields__[name].type)
        choices = item["choices"]
        option = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=click.Choice(choices) if choices else types.get(kind, str),
            help=item["help"],
        )
        func = option(func)
    return func


@click.command()
@common_options
@click.option("--host", help="Address to listen on (0.0.0.0 for the whole LAN).")
@click.option("--port", type=int, help="HTTP port.")
@click.option("--model", help="Catalog id or GGUF path of the chat model.")
@click.option("--mesh/--no-mesh", "mesh", default=None, help="Join the mesh (default) or not.")
@click.option(
    "--no-speech", "speech", flag_value="off", default=None, help="Turn text-to-speech off."
)
@click.option(
    "--speech",
    "speech_mode",
    type=click.Choice(["auto", "on", "off"]),
    help="Text-to-speech: auto (decided by the hardware profile), on or off.",
)
@_setting_options
def serve(config_path: Path | None, speech_mode: str | None, **flags: Any) -> None:
    """Run the appliance: web page, API, inference, memory, speech and mesh.

    Every setting is also a flag here (docs/settings.md lists them).
    """
    if speech_mode is not None:
        flags["speech"] = speech_mode
    settings = make_settings(config_path, **flags)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    import uvicorn  # imported here: other commands should start fast

    from mongars_edge.runtime import Runtime
    from mongars_edge.telemetry import serve_with_notify
    from mongars_edge.web import create_app

    # Bind before loading anything: a busy port is a clear error in a second, not a traceback
    # after the model has loaded.
    listener = _listen(settings.host, settings.port)
    async with Runtime(settings) as runtime:
        url = local_url(settings.host, listener.getsockname()[1])
        await asyncio.to_thread(write_marker, runtime.data_dir, url)
        config = uvicorn.Config(
            create_app(runtime),
            fd=listener.fileno(),
            log_config=None,
            timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout_s)),
            server_header=False,
        )
        server = uvicorn.Server(config)
        # uvicorn re-raises the stop signal after shutting down; with the default handler in
        # place that would kill us before the Runtime closes. Ours only records it.
        received: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda num, _frame: received.append(num))
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            # READY=1 for systemd once uvicorn listens; STOPPING=1 on the way out.
            await serve_with_notify(server, runtime.watchdog.notifier)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            await asyncio.to_thread(remove_marker, runtime.data_dir)
    listener.close()
    log.info("stopped cleanly")


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise MongarsError(
            f"cannot listen on {host}:{port}: {exc.strerror} "
            "(is another server using that port? choose another with --port)"
        ) from None


@click.command("probe")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print facts and profile as JSON.")
@click.option(
    "--sysroot",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read /proc, /sys and /etc under this directory instead of / (tests, recordings).",
)
def probe_cmd(config_path: Path | None, as_json: bool, **flags: Any) -> None:
    """Show what this box is and how the engine will be tuned for it."""
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.lowlevel import cpu_backend
    from mongars_edge.inference.manager import load_profile
    from mongars_edge.inference.onnx_report import report

    settings = make_settings(config_path, **flags)
    data_dir = settings.resolved_data_dir()
    facts = probe(settings.sysroot, data_dir)
    profile = load_profile(facts, data_dir)
    # The providers of the onnxruntime installed beside this CLI (the app's), not the sysroot's.
    onnx = report(
        profile.onnx_providers,
        jetson=facts.board.startswith("jetson") or facts.l4t_release is not None,
        tensorrt_lib=facts.tensorrt,
    )
    # Which llama.cpp CPU variant this machine loads; a recorded sysroot is not this machine.
    backend = cpu_backend() if Path(settings.sysroot) == Path("/") else None
    if as_json:
        payload: dict[str, object] = {
            "facts": facts.to_dict(),
            "profile": profile.to_dict(),
            "onnx": {**onnx.to_dict(), "problems": onnx.problems()},
            "llama_cpu": backend.to_dict() if backend is not None else None,
        }
        click.echo(json.dumps(payload, indent=2, ensure_ascii=False))
        return
    click.echo(f"board       {facts.board} ({facts.board_model or 'no model string'})")
    click.echo(f"cpu         {facts.cpu_count} x {facts.arch} {facts.cpu_model}")
    click.echo(f"memory      {facts.mem_total_mb} MB, swap {facts.swap_total_mb} MB")
    click.echo(f"gpu         {_gpu_line(facts)}")
    click.echo(f"storage     {facts.storage}")
    click.echo(
        f"onnx        wants {', '.join(onnx.wanted)}; present {', '.join(onnx.present) or 'none'}"
        f" ({onnx.package or 'onnxruntime not installed'})"
    )
    if backend is not None:
        click.echo(f"llama.cpp   CPU {backend.summary()}")
    for warning in facts.warnings:
        click.echo(f"warning     {warning}")
    for problem in onnx.problems():
        click.echo(f"problem     {problem}")
    click.echo(f"\nprofile ({profile.source}):")
    for key, value in profile.to_dict().items():
        if key in ("reasons", "source"):
            continue
        reason = profile.reasons.get(key, "")
        click.echo(f"  {key:<16} {value!s:<24} {reason}")


def _gpu_line(facts: HardwareFacts) -> str:
    if not facts.cuda:
        return "none"
    parts = ["CUDA"]
    if facts.jetpack_package or facts.jetpack:
        parts.append(f"JetPack {facts.jetpack_package or facts.jetpack}")
    parts.append(f"TensorRT {facts.tensorrt}" if facts.tensorrt else "no TensorRT")
    parts.append(f"cuDNN {facts.cudnn}" if facts.cudnn else "no cuDNN")
    return ", ".join(parts)


@click.command("tui")
@common_options
@click.option("--url", help="Daemon URL (default: this box, from the host and port settings).")
@click.option(
    "--token",
    envvar="MONGARS_TUI_TOKEN",
    help="API bearer token, or $MONGARS_TUI_TOKEN (out of `ps`). Default: the local admin token.",
)
def tui_cmd(config_path: Path | None, url: str | None, token: str | None, **flags: Any) -> None:
    """Open the terminal UI: chat, memories, hardware, mesh and logs."""
    from mongars_edge.tui.app import run_tui  # Textual is heavy; other commands start fast

    run_tui(make_settings(config_path, **flags), url=url, token=token)


def add_commands(main: click.Group) -> None:
    """Register serve, probe and tui on the CLI group."""
    for command in (serve, probe_cmd, tui_cmd):
        main.add_command(command)
