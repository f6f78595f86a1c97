"""On-device speech: Piper text-to-speech, Whisper speech-to-text, a Wyoming server."""
