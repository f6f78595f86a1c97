"""Authenticated key exchange and the encrypted session: pure state machines, no I/O.

Handshake (SIGMA-style, three messages):
  I -> R  HsInit(version, purpose, id_I, eph_I)
  R -> I  HsResp(version, id_R, eph_R, sig_R("resp" | th))      th = H(init | version, id_R, eph_R)
  I -> R  HsAuth(sig_I("auth" | th))
Each side checks the other's signature with the key it pinned at pairing, so only members get a
session. Session keys come from the ephemeral X25519 exchange and th (forward secrecy: the
long-term keys only sign). One key per direction; each frame carries a strictly increasing
64-bit counter used as the SecretBox nonce, and the receiver refuses any counter not above the
last one accepted (replay or reorder = a dead connection).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import TypeVar

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey
from nacl.secret import SecretBox

from mongars_edge.mesh import codec
from mongars_edge.mesh.codec import HsAuth, HsInit, HsResp, Msg
from mongars_edge.mesh.errors import AuthError, CodecError, VersionError
from mongars_edge.mesh.identity import Identity, node_id_of, verify

_M = TypeVar("_M", bound=Msg)
KeyLookup = Callable[[str], bytes | None]
_COUNTER = struct.Struct(">Q")
_NONCE_PAD = b"\x00" * (SecretBox.NONCE_SIZE - _COUNTER.size)


def _th(init: bytes, resp: HsResp) -> bytes:
    core = codec.encode(HsResp(resp.version, resp.node_id, resp.eph, b""))
    return hashlib.blake2b(b"mongars-hs-v1" + init + core, digest_size=32).digest()


def _keys(eph: PrivateKey, peer_eph: bytes, th: bytes) -> tuple[bytes, bytes]:
    if len(peer_eph) != 32:
        raise AuthError("bad ephemeral key")
    try:
        shared = crypto_scalarmult(bytes(eph), peer_eph)
    except (CryptoError, ValueError, TypeError) as exc:
        raise AuthError(f"bad ephemeral key ({type(exc).__name__})") from None
    i2r = hashlib.blake2b(shared + th, digest_size=32, person=b"mongars-i2r").digest()
    r2i = hashlib.blake2b(shared + th, digest_size=32, person=b"mongars-r2i").digest()
    return i2r, r2i


def _decode_as(data: bytes, cls: type[_M]) -> _M:
    msg = codec.decode(data)
    if isinstance(msg, codec.Error):
        error = VersionError if msg.kind == VersionError.kind else AuthError
        raise error(f"peer refused: {msg.message}")
    if not isinstance(msg, cls):
        raise CodecError(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


class Session:
    """Seals and opens session messages with per-direction keys and counters."""

    def __init__(self, peer_id: str, send_key: bytes, recv_key: bytes) -> None:
        self.peer_id = peer_id
        self._send = SecretBox(send_key)
        self._recv = SecretBox(recv_key)
        self._sent = 0
        self._received = 0

    def seal(self, msg: Msg) -> bytes:
        """The payload of one encrypted frame."""
        return self.seal_bytes(codec.encode(msg))

    def seal_bytes(self, plain: bytes) -> bytes:
        """The payload of one encrypted frame holding `plain` as it is (fuzzing a peer)."""
        self._sent += 1
        counter = _COUNTER.pack(self._sent)
        box = self._send.encrypt(plain, _NONCE_PAD + counter)
        return counter + bytes(box.ciphertext)

    def open(self, payload: bytes) -> Msg:
        """A message from an encrypted frame; AuthError for tampered or replayed frames,
        BadMessageError for an authentic frame that holds no valid message (the session goes on:
        its counter has moved past it)."""
        if len(payload) < _COUNTER.size + SecretBox.MACBYTES:
            raise CodecError("truncated encrypted frame")
        (counter,) = _COUNTER.unpack(payload[: _COUNTER.size])
        if counter <= self._received:
            raise AuthError(f"replayed or reordered frame (counter {counter})")
        try:
            plain = self._recv.decrypt(payload[_COUNTER.size :], _NONCE_PAD + payload[:8])
        except CryptoError:
            raise AuthError("tampered frame (authentication failed)") from None
        self._received = counter
        return codec.decode(plain)


class Initiator:
    """The dialling side of a handshake."""

    def __init__(self, me: Identity, keys: KeyLookup, expect: str | None = None) -> None:
        self._me = me
        self._keys = keys
        self._expect = expect
        self._eph = PrivateKey.generate()
        self._init = b""

    def hello(self) -> bytes:
        msg = HsInit(codec.PROTOCOL_VERSION, "mesh", self._me.node_id, bytes(self._eph.public_key))
        self._init = codec.encode(msg)
        return self._init

    def finish(self, data: bytes) -> tuple[bytes, Session]:
        """Check the responder; returns the HsAuth bytes to send and the session."""
        resp = _decode_as(data, HsResp)
        if resp.version != codec.PROTOCOL_VERSION:
            raise VersionError(codec.version_problem(resp.version))
        if self._expect is not None and resp.node_id != self._expect:
            raise AuthError(f"expected node {self._expect}, {resp.node_id} answered")
        key = self._keys(resp.node_id)
        if key is None or node_id_of(key) != resp.node_id:
            raise AuthError(f"node {resp.node_id} is not paired with this box")
        th = _th(self._init, resp)
        verify(key, b"resp" + th, resp.sig)
        i2r, r2i = _keys(self._eph, resp.eph, th)
        auth = codec.encode(HsAuth(self._me.sign(b"auth" + th)))
        return auth, Session(resp.node_id, send_key=i2r, recv_key=r2i)


class Responder:
    """The accepting side of a handshake."""

    def __init__(self, me: Identity, keys: KeyLookup) -> None:
        self._me = me
        self._keys = keys
        self._eph = PrivateKey.generate()
        self._th = b""
        self._peer = ""
        self._peer_key = b""
        self._peer_eph = b""

    def respond(self, init: HsInit, init_bytes: bytes) -> bytes:
        """HsResp for a pinned initiator; AuthError for strangers and other versions."""
        if init.version != codec.PROTOCOL_VERSION:
            raise VersionError(codec.version_problem(init.version))
        key = self._keys(init.node_id)
        if key is None or node_id_of(key) != init.node_id:
            raise AuthError(f"node {init.node_id} is not paired with this box")
        eph = bytes(self._eph.public_key)
        core = HsResp(codec.PROTOCOL_VERSION, self._me.node_id, eph, b"")
        self._th = _th(init_bytes, core)
        self._peer, self._peer_key, self._peer_eph = init.node_id, key, init.eph
        sig = self._me.sign(b"resp" + self._th)
        return codec.encode(HsResp(codec.PROTOCOL_VERSION, self._me.node_id, eph, sig))

    def finish(self, data: bytes) -> Session:
        auth = _decode_as(data, HsAuth)
        verify(self._peer_key, b"auth" + self._th, auth.sig)
        i2r, r2i = _keys(self._eph, self._peer_eph, self._th)
        return Session(self._peer, send_key=r2i, recv_key=i2r)
