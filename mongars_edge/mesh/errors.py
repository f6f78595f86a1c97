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


class AuthError(MeshError):
    """A peer failed authentication: unpaired, revoked, bad signature, tampered or replayed."""

    kind = "peer_auth"


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
