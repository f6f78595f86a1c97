"""`mongars-edge models …`, `adapters …` and `bench`: thin click commands over the inference core.

Everything heavy (llama_cpp, httpx, gguf) is imported inside the commands, so that every other
CLI call stays fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "?"


class _ProgressLine:
    """A one-line progress display on stderr, redrawn at most 5 times a second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.2 and done != total:
            return
        self._last = now
        self._drawn = True
        pct = f"{100 * done / total:5.1f}%" if total else "     "
        click.echo(f"\r{self.label} {pct} {_mib(done)} / {_mib(total)}", nl=False, err=True)

    def close(self) -> None:
        if self._drawn:
            self._drawn = False
            click.echo("", err=True)


def _auto_models(settings: Any) -> list[str]:
    """The catalog models this box's settings and profile choose (those a pull can fetch)."""
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.manager import OFF, load_profile, model_spec
    from mongars_edge.inference.models import ModelStore
    from mongars_edge.speech.service import stt_model_for, wanted

    data_dir = settings.resolved_data_dir()
    profile = load_profile(probe(settings.sysroot, data_dir, quiet=True), data_dir)
    names = [model_spec(settings, profile)]
    if wanted(settings.stt, profile.stt):
        names.append(stt_model_for(settings, profile))
    catalog = ModelStore(data_dir).catalog
    return [n for n in names if n != OFF and n in catalog and not catalog[n].embedded]


def add_commands(main: click.Group) -> None:
    """Register the inference commands on the CLI group."""

    @click.group("models")
    def models_group() -> None:
        """List, download and remove chat and speech-to-text models."""

    @models_group.command("list")
    @common_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def models_list(config_path: Path | None, as_json: bool, **flags: Any) -> None:
        """Show the catalog and what is on this box."""
        from mongars_edge.hardware.probe import probe
        from mongars_edge.inference.manager import load_profile, model_spec
        from mongars_edge.inference.models import ModelStore, describe
        from mongars_edge.speech.service import stt_model_for

        settings = make_settings(config_path, **flags)
        data_dir = settings.resolved_data_dir()
        store = ModelStore(data_dir)
        profile = load_profile(probe(settings.sysroot, data_dir, quiet=True), data_dir)
        chosen = (model_spec(settings, profile), stt_model_for(settings, profile))
        rows = store.list()
        if as_json:
            click.echo(json.dumps([describe(r) for r in rows], indent=2))
            return
        for row in rows:
            e = row.entry
            mark = "*" if row.id in chosen else " "
            state = "installed" if row.installed else "-"
            if e is None:
                click.echo(f"{mark} {row.id:<28} {'chat':<6} {'local':<7} {state:<10} {row.path}")
                continue
            kind = "speech" if e.kind == "stt" else e.kind
            click.echo(
                f"{mark} {row.id:<28} {kind:<6} {e.tier:<7} {state:<10} "
                f"{_mib(e.size_bytes):>10}  {e.source:<7} {e.licence}"
            )

    @models_group.command("pull")
    @common_options
    @click.argument("model_id")
    def models_pull(config_path: Path | None, model_id: str, **flags: Any) -> None:
        """Download and verify a catalog model (resumes an interrupted pull).

        MODEL_ID `auto` pulls what this box's settings and hardware profile choose: the chat
        model and, when speech-to-text is on, its model (nothing when they are already here).
        """
        from mongars_edge.inference.models import ModelStore

        settings = make_settings(config_path, **flags)
        store = ModelStore(settings.resolved_data_dir(), pypi_index=settings.pypi_index)
        wanted = _auto_models(settings) if model_id == "auto" else [model_id]
        for one in wanted:
            entry = store.entry(one)
            if model_id == "auto" and store.path_of(entry) is not None:
                click.echo(f"{one}: already installed")
                continue
            progress = _ProgressLine(one)
            try:
                path = store.pull(one, progress=progress)
            except KeyboardInterrupt:
                progress.close()
                click.echo(f"interrupted; `mongars-edge models pull {one}` resumes", err=True)
                raise click.exceptions.Exit(130) from None
            finally:
                progress.close()
            click.echo(f"{one}: {path}")
            if entry.kind == "stt" and settings.stt_model not in (one, "auto"):
                click.echo(f'set stt_model = "{one}" to use it', err=True)

    @models_group.command("rm")
    @common_options
    @click.argument("model_id")
    def models_rm(config_path: Path | None, model_id: str, **flags: Any) -> None:
        """Delete a downloaded model (and what an unfinished pull of it kept)."""
        from mongars_edge.inference.models import ModelStore

        settings = make_settings(config_path, **flags)
        path = ModelStore(settings.resolved_data_dir()).remove(model_id)
        click.echo(f"removed {path}")

    @click.group("adapters")
    def adapters_group() -> None:
        """LoRA adapters a request may name."""

    @adapters_group.command("list")
    @common_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    def adapters_list(config_path: Path | None, as_json: bool, **flags: Any) -> None:
        """Show stored adapters."""
        from dataclasses import asdict

        from mongars_edge.inference.adapters import AdapterStore

        settings = make_settings(config_path, **flags)
        adapters = AdapterStore(settings.resolved_data_dir()).list()
        if as_json:
            click.echo(json.dumps([asdict(a) for a in adapters], indent=2))
            return
        if not adapters:
            click.echo("no adapters on this box (add one: mongars-edge adapters add FILE)")
        for a in adapters:
            click.echo(f"{a.id}  {a.name:<24} {a.architecture:<8} {a.base_model}")

    @adapters_group.command("add")
    @common_options
    @click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--name", help="Name requests use (default: from the file).")
    @click.option("--model", help="Base model (catalog id or GGUF path); default: the setting.")
    def adapters_add(config_path: Path | None, file: Path, name: str | None, **flags: Any) -> None:
        """Check a LoRA GGUF against the base model and store it."""
        from mongars_edge.inference.adapters import AdapterStore
        from mongars_edge.inference.models import ModelStore

        settings = make_settings(config_path, **flags)
        data_dir = settings.resolved_data_dir()
        from mongars_edge.inference.manager import model_spec

        _, base = ModelStore(data_dir).resolve(model_spec(settings))
        adapter = AdapterStore(data_dir).add(file, base, name)
        click.echo(f"added {adapter.name} ({adapter.id}) for {adapter.base_model}")

    @adapters_group.command("rm")
    @common_options
    @click.argument("ref")
    def adapters_rm(config_path: Path | None, ref: str, **flags: Any) -> None:
        """Delete a stored adapter (by name or id)."""
        from mongars_edge.inference.adapters import AdapterStore

        settings = make_settings(config_path, **flags)
        adapter = AdapterStore(settings.resolved_data_dir()).remove(ref)
        click.echo(f"removed {adapter.name} ({adapter.id})")

    @main.command("bench")
    @common_options
    @click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
    @click.option("--model", help="Model to measure (default: the setting).")
    @click.option("--quick", is_flag=True, help="Fewer candidates and shorter runs.")
    def bench_cmd(config_path: Path | None, as_json: bool, quick: bool, **flags: Any) -> None:
        """Measure this box and write the tuning profile the engine will use."""
        from mongars_edge.inference.autotune import run_autotune

        settings = make_settings(config_path, **flags)
        report = run_autotune(settings, quick=quick, echo=None if as_json else click.echo)
        if as_json:
            click.echo(json.dumps(report, indent=2))

    main.add_command(models_group)
    main.add_command(adapters_group)
