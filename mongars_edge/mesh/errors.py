"""Errors of the peer mesh; the transport turns them into wire errors or a closed connection."""

from __future__ import annotations

from mongars_edge.errors import MongarsError, UnavailableError


class MeshError(MongarsError):
    """Something about the mesh went wrong; the message says what to do."""

    kind = "mesh_error"


class CodecError(MeshError, ValueError):
    """Bytes from a peer are not a valid frame or message (garbage, truncated, oversized)."""

    kind = "bad_frame"


class FrameTooLargeError(CodecError):
    """A frame header announces more bytes than the hard limit."""

    kind = "frame_too_large"


class BadMessageError(CodecError):
    """A frame that is not a message of this protocol: unknown type, wrong shape, out of range.
    `tag` and `stream_id` say what it claimed to be, when that much could be read."""

    kind = "bad_message"

    def __init__(self, message: str, *, tag: int | None = None, stream_id: int | None = None):
        super().__init__(message)
        self.tag = tag
        self.stream_id = stream_id


class AuthError(MeshError):
    """A peer failed authentication: unpaired, revoked, bad signature, tampered or replayed."""

    kind = "peer_auth"


class VersionError(AuthError):
    """A peer speaks another mesh protocol version; the message names both."""

    kind = "peer_version"


class PairingError(MeshError):
    """Pairing did not complete (wrong or expired code, no pairing window, peer gone)."""

    kind = "pairing_failed"
    exit_code = 3


class PeerUnavailableError(MeshError, UnavailableError):
    """A peer is unreachable, stalled or closed the connection."""

    http_status = 503
    kind = "peer_unavailable"


class PeerTimeoutError(PeerUnavailableError, TimeoutError):
    """A peer sent nothing for longer than allowed."""

    kind = "peer_timeout"


class SplitVersionError(MeshError):
    """A box offering its RPC worker runs another llama.cpp build; the message names both."""

    kind = "split_version"
