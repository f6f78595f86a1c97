"""`mongars-edge say` and `mongars-edge listen`: speech on the command line, offline."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path
from typing import Any

import click

from mongars_edge.cli.base import common_options, make_settings
from mongars_edge.datadir import DataDir
from mongars_edge.errors import InvalidRequestError, MongarsError


def add_commands(main: click.Group) -> None:
    """Register the speech commands on the CLI group."""

    @main.command()
    @common_options
    @click.argument("text")
    @click.option(
        "-o",
        "--output",
        type=click.Path(path_type=Path, dir_okay=False),
        required=True,
        help="WAV file to write.",
    )
    @click.option("--voice", help="Voice name (see `say --list-voices`); default by language.")
    @click.option("--language", help="en or fr; default: guessed from the text.")
    @click.option("--speed", type=float, default=1.0, show_default=True, help="0.25 to 4.")
    def say(
        config_path: Path | None,
        text: str,
        output: Path,
        voice: str | None,
        language: str | None,
        speed: float,
        **flags: Any,
    ) -> None:
        """Speak TEXT into a WAV file (use - for TEXT to read it from stdin)."""
        settings = make_settings(config_path, **flags)
        if text == "-":
            text = sys.stdin.read()
        from mongars_edge.speech.tts import check_request

        check_request(text, speed)  # fail in a second, before the voices load
        tts = _load_tts(settings)
        chunks = tts.iter_blocking(text, voice=voice, language=language, speed=speed)
        seconds = 0.0
        try:
            with wave.open(str(output), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                for i, chunk in enumerate(chunks):
                    if i == 0:
                        wav.setframerate(chunk.rate)
                    wav.writeframes(chunk.pcm)
                    seconds += len(chunk.pcm) / 2 / chunk.rate
        except OSError as exc:
            raise MongarsError(f"cannot write {output}: {exc.strerror}") from None
        except InvalidRequestError:
            output.unlink(missing_ok=True)
            raise
        click.echo(f"wrote {output} ({seconds:.1f} s)", err=True)

    @main.command()
    @common_options
    @click.argument("audio", type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--language", help="Spoken language (multilingual models only).")
    @click.option("--json", "as_json", is_flag=True, help="Print text, language and duration.")
    def listen(
        config_path: Path | None,
        audio: Path,
        language: str | None,
        as_json: bool,
        **flags: Any,
    ) -> None:
        """Print what is said in an audio file (WAV, Ogg, WebM, MP3, FLAC)."""
        settings = make_settings(config_path, **flags)
        try:
            data = audio.read_bytes()
        except OSError as exc:
            raise MongarsError(f"cannot read {audio}: {exc.strerror}") from None
        from mongars_edge.speech.audio import decode_audio
        from mongars_edge.speech.stt import SpeechToText

        samples = decode_audio(data)  # a bad file fails before the model loads
        data_dir = settings.resolved_data_dir()
        stt = SpeechToText.load(_stt_model(settings), threads=_threads(), data_dir=data_dir)
        result = stt.transcribe_blocking(samples, language)
        if as_json:
            payload = {
                "text": result.text,
                "language": result.language,
                "duration": round(result.duration_s, 3),
            }
            click.echo(json.dumps(payload, ensure_ascii=False))
        else:
            click.echo(result.text)

    @main.group("voices")
    def voices_group() -> None:
        """List, download and remove Piper voices."""

    @voices_group.command("list")
    @common_options
    def voices_list(config_path: Path | None, **flags: Any) -> None:
        """Show the voice catalog and what is installed."""
        from mongars_edge.speech.catalog import CATALOG, installed

        settings = make_settings(config_path, **flags)
        have = set(installed(settings.resolved_data_dir()))
        click.echo("joe                  en  installed (bundled)")
        click.echo("espeak-fr            fr  installed (espeak-ng; while no French Piper voice)")
        for entry in CATALOG.values():
            mark = "installed" if entry.id in have else "-"
            click.echo(f"{entry.id:<20} {entry.language}  {mark:<9} {entry.notes}")
        for other in sorted(have - set(CATALOG)):
            click.echo(f"{other:<20} ?   installed (not in the catalog)")

    @voices_group.command("pull")
    @common_options
    @click.argument("voice_id")
    def voices_pull(config_path: Path | None, voice_id: str, **flags: Any) -> None:
        """Download and install VOICE_ID (restart the box to use it)."""
        from mongars_edge.speech.catalog import pull

        settings = make_settings(config_path, **flags)
        path = pull(voice_id, settings.resolved_data_dir())
        click.echo(f"installed {path}; restart mongars-edge to use it", err=True)

    @voices_group.command("rm")
    @common_options
    @click.argument("voice_id")
    def voices_rm(config_path: Path | None, voice_id: str, **flags: Any) -> None:
        """Remove an installed voice."""
        from mongars_edge.speech.catalog import remove

        settings = make_settings(config_path, **flags)
        remove(voice_id, settings.resolved_data_dir())
        click.echo(f"removed {voice_id}", err=True)


def _threads() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))


def _load_tts(settings: Any) -> Any:
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.manager import load_profile
    from mongars_edge.speech.tts import TextToSpeech

    data_dir = settings.resolved_data_dir()
    profile = load_profile(probe(settings.sysroot, data_dir), data_dir)
    return TextToSpeech.load(DataDir(data_dir).voices, profile.onnx_providers)


def _stt_model(settings: Any) -> str:
    """The speech-to-text model the settings choose (auto: the hardware profile's)."""
    if settings.stt_model != "auto":
        return str(settings.stt_model)
    from mongars_edge.hardware.probe import probe
    from mongars_edge.inference.manager import load_profile
    from mongars_edge.speech.service import stt_model_for

    data_dir = settings.resolved_data_dir()
    return stt_model_for(
        settings, load_profile(probe(settings.sysroot, data_dir, quiet=True), data_dir)
    )
