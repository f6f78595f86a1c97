"""Pairing: a short one-time code shown on a member lets a new box join (SPAKE2, one guess).

Member (running `serve`): `mongars-edge pair` opens a window by writing a code to
`mesh/pairing.json` (0600, a few minutes). The first pairing attempt that reaches the server
burns the window, right or wrong, so an attacker gets one online guess per code shown.

    J -> M  PairStart(version, SPAKE2_A(code))
    M -> J  PairReply(SPAKE2_B(code))                 both now hold K, or unrelated keys
    J -> M  Sealed_K(j2m, PairJoin(id_J, key_J, name))     wrong code = does not open
    M -> J  Sealed_K(m2j, PairWelcome(id_M, key_M, mesh id, signed member records))

Both sides pin the other's Ed25519 key; the member signs an "add" record for the joiner that
the rest of the mesh accepts by gossip. See docs/pairing.md for the security argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox
from spake2 import SPAKE2_A, SPAKE2_B

from mongars_edge.mesh import codec
from mongars_edge.mesh.codec import PairJoin, PairReply, PairStart, PairWelcome, Sealed
from mongars_edge.mesh.errors import (
    AuthError,
    CodecError,
    MeshError,
    PairingError,
    VersionError,
)
from mongars_edge.mesh.identity import Identity, mesh_dir, node_id_of
from mongars_edge.mesh.members import MemberFile, MemberRecord
from mongars_edge.mesh.peers import split_address
from mongars_edge.mesh.transport import HANDSHAKE_TIMEOUT_S, read_frame, write_frame

log = logging.getLogger(__name__)

OFFER_FILE: Final = "pairing.json"
CODE_DIGITS: Final = 8
DEFAULT_TTL_S: Final = 300.0
_ID_JOINER = b"mongars-pair-joiner-v1"
_ID_MEMBER = b"mongars-pair-member-v1"


def new_code() -> str:
    """8 random digits shown as 1234-5678."""
    digits = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
    return f"{digits[:4]}-{digits[4:]}"


def normalize(code: str) -> bytes:
    digits = "".join(ch for ch in code if ch.isdigit())
    if len(digits) != CODE_DIGITS or len(digits) != len(code.replace("-", "").replace(" ", "")):
        raise PairingError(f"a pairing code is {CODE_DIGITS} digits, like 1234-5678")
    return digits.encode()


def open_window(data_dir: Path, ttl_s: float = DEFAULT_TTL_S) -> str:
    """Write a fresh code for the running server to accept once; returns it."""
    code = new_code()
    path = mesh_dir(data_dir) / OFFER_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"code": code, "expires_at": time.time() + ttl_s}, fh)
    os.replace(tmp, path)
    return code


def window_open(data_dir: Path) -> bool:
    path = mesh_dir(data_dir) / OFFER_FILE
    try:
        return float(json.loads(path.read_text())["expires_at"]) > time.time()
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _take_window(data_dir: Path) -> bytes | None:
    """The open code, removing it: each window allows one attempt."""
    path = mesh_dir(data_dir) / OFFER_FILE
    try:
        data = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return None
    try:
        if float(data["expires_at"]) < time.time():
            return None
        return normalize(str(data["code"]))
    except (KeyError, TypeError, ValueError, PairingError):
        return None


def _keys(k: bytes) -> tuple[SecretBox, SecretBox]:
    j2m = hashlib.blake2b(k, digest_size=32, person=b"mongars-pair-j2m").digest()
    m2j = hashlib.blake2b(k, digest_size=32, person=b"mongars-pair-m2j").digest()
    return SecretBox(j2m), SecretBox(m2j)


def _open(box: SecretBox, data: bytes) -> codec.Msg:
    msg = codec.decode(data)
    if isinstance(msg, codec.Error):
        raise PairingError(msg.message)
    if not isinstance(msg, Sealed):
        raise PairingError(f"unexpected {type(msg).__name__} during pairing")
    try:
        return codec.decode(box.decrypt(msg.box))
    except CryptoError:
        raise PairingError("the pairing code did not match; run `pair` again") from None


def _seal(box: SecretBox, msg: codec.Msg) -> bytes:
    return codec.encode(Sealed(bytes(box.encrypt(codec.encode(msg)))))


async def serve_pairing(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    start: PairStart,
    me: Identity,
    data_dir: Path,
) -> MemberRecord:
    """The member side; returns the signed record of the new member."""
    if start.version != codec.PROTOCOL_VERSION:
        # Before the window is taken: a joiner of another version does not burn the code.
        why = codec.version_problem(start.version)
        write_frame(writer, codec.encode(codec.Error(0, VersionError.kind, why)))
        await writer.drain()
        raise VersionError(why)
    code = await asyncio.to_thread(_take_window, data_dir)
    if code is None:
        why = "no pairing window is open on that box (run `mongars-edge pair` on it first)"
        write_frame(writer, codec.encode(codec.Error(0, "pairing_closed", why)))
        await writer.drain()
        raise PairingError(why)
    spake = SPAKE2_B(code, idA=_ID_JOINER, idB=_ID_MEMBER)
    reply = spake.start()
    try:
        key = await asyncio.to_thread(spake.finish, start.spake)
    except Exception as exc:  # spake2 raises its own and ValueError on malformed elements
        raise PairingError(f"bad pairing message ({type(exc).__name__})") from None
    j2m, m2j = _keys(key)
    write_frame(writer, codec.encode(PairReply(reply)))
    await writer.drain()
    try:
        join = _open(j2m, await read_frame(reader, HANDSHAKE_TIMEOUT_S))
    except PairingError as exc:
        write_frame(writer, codec.encode(codec.Error(0, "pairing_failed", str(exc))))
        await writer.drain()
        raise
    if not isinstance(join, PairJoin) or node_id_of(join.verify_key) != join.node_id:
        raise PairingError("the joiner sent an inconsistent identity")
    record, records, mesh_id = await asyncio.to_thread(_admit, join, me, data_dir)
    welcome = PairWelcome(me.node_id, me.verify_key, mesh_id, records)
    write_frame(writer, _seal(m2j, welcome))
    await writer.drain()
    log.info("paired with node %s (%s)", join.node_id, join.name or "unnamed")
    return record


def _admit(join: PairJoin, me: Identity, data_dir: Path) -> tuple[MemberRecord, list[Any], bytes]:
    """Pin the joiner and sign its record (file work: runs in a thread)."""
    with MemberFile(data_dir).changing() as state:
        state.pin(join.node_id, join.verify_key, join.name)
        record = state.issue(me, join.node_id, join.verify_key, "add")
        return record, [r.to_wire() for r in state.all_records()], state.mesh_id


def _unreachable(host: str, port: int, exc: OSError) -> PairingError:
    if isinstance(exc, TimeoutError):
        reason = "timed out"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "connection refused"
    else:
        reason = (exc.strerror or str(exc)).lower()
    return PairingError(
        f"cannot reach {host}:{port} ({reason}): is the member serving, and is {port} its mesh "
        "port? `mongars-edge pair` on the member prints the --peer to give"
    )


async def _first_reply(reader: asyncio.StreamReader, host: str, port: int) -> bytes:
    """The member's first frame; a web server's answer is named as such (a common mix-up)."""
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            header = await reader.readexactly(codec.HEADER_SIZE)
    except TimeoutError:
        raise PairingError(f"{host}:{port} answered nothing; is it a box's mesh port?") from None
    except (asyncio.IncompleteReadError, OSError):
        why = f"{host}:{port} closed the connection; is it a box's mesh port?"
        raise PairingError(why) from None
    if header == b"HTTP":
        raise PairingError(
            f"{host}:{port} is a web server (the box's HTTP port?); --peer wants the member's "
            "mesh port (the mesh_port setting, 8765 by default)"
        )
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            return await reader.readexactly(codec.frame_length(header))
    except (TimeoutError, asyncio.IncompleteReadError, OSError):
        raise PairingError(f"{host}:{port} stopped answering during pairing") from None


async def join(host: str, port: int, code: str, me: Identity, data_dir: Path, name: str) -> str:
    """The joining side; returns the member's node id. PairingError says what went wrong.

    The member's address is remembered with its key, so that this box dials it there even
    where mDNS does not reach (another subnet, loopback, multicast filtered).
    """
    password = normalize(code)
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise _unreachable(host, port, exc) from None
    try:
        spake = SPAKE2_A(password, idA=_ID_JOINER, idB=_ID_MEMBER)
        write_frame(writer, codec.encode(PairStart(codec.PROTOCOL_VERSION, spake.start())))
        await writer.drain()
        reply = codec.decode(await _first_reply(reader, host, port))
        if isinstance(reply, codec.Error):
            raise PairingError(reply.message)
        if not isinstance(reply, PairReply):
            raise PairingError(f"unexpected {type(reply).__name__} during pairing")
        try:
            key = await asyncio.to_thread(spake.finish, reply.spake)
        except Exception as exc:
            raise PairingError(f"bad pairing message ({type(exc).__name__})") from None
        j2m, m2j = _keys(key)
        write_frame(writer, _seal(j2m, PairJoin(me.node_id, me.verify_key, name)))
        await writer.drain()
        welcome = _open(m2j, await read_frame(reader, HANDSHAKE_TIMEOUT_S))
    except (CodecError, MeshError) as exc:
        if isinstance(exc, PairingError):
            raise
        raise PairingError(f"pairing with {host}:{port} failed: {exc}") from None
    finally:
        writer.close()
    if not isinstance(welcome, PairWelcome) or node_id_of(welcome.verify_key) != welcome.node_id:
        raise PairingError("the member sent an inconsistent identity")
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await asyncio.to_thread(_adopt, welcome, me, data_dir, address)
    return welcome.node_id


def unpaired_addresses(rows: Iterable[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """Where the unpaired boxes of a peers report (`peers --json`, `/api/peers`) listen."""
    out = []
    for row in rows:
        found = split_address(str(row.get("address") or ""))
        if found is not None and not row.get("paired"):
            out.append(found)
    return out


async def join_through(
    targets: Sequence[tuple[str, int]], code: str, me: Identity, data_dir: Path, name: str
) -> str:
    """Join through the first of *targets* (host, port) that admits this box; returns the
    member's node id (`pair --join` and `POST /api/peers/pair`).

    One target: its PairingError as it is. Several: one PairingError naming each failure. A
    code that did not match stops the tries: the box that showed it has burnt its window.
    """
    normalize(code)  # a malformed code is one error, not one per target
    errors = []
    for host, port in targets:
        try:
            return await join(host, port, code, me, data_dir, name)
        except MeshError as exc:
            if len(targets) == 1:
                raise
            errors.append(f"{host}:{port}: {exc}")
            if "did not match" in str(exc):
                break
    raise PairingError("pairing failed: " + ("; ".join(errors) or "no box to join through"))


def _adopt(welcome: PairWelcome, me: Identity, data_dir: Path, address: str) -> None:
    with MemberFile(data_dir).changing() as state:
        if state.mesh_id != welcome.mesh_id:
            state.mesh_id = welcome.mesh_id
            state.records.clear()
        state.pin(welcome.node_id, welcome.verify_key)
        state.members[welcome.node_id].address = address
        pending = []
        for raw in welcome.records:
            with contextlib.suppress(AuthError):
                pending.append(MemberRecord.from_wire(raw))
        for rec in pending:
            if rec.subject == me.node_id and rec.signer == welcome.node_id:
                state.records[me.node_id] = rec  # our own admission, shown to other members
        changed = True
        while changed:  # a record may be signed by a member another record admits
            changed = False
            for rec in pending:
                try:
                    changed |= state.accept(rec, me)
                except AuthError:
                    continue
