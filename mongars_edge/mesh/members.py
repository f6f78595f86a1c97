"""Who is in the mesh: pinned keys, signed membership records, revocations; a 0600 JSON file.

A record "node N with key K is a member (or revoked)" is signed by a member. A box accepts a
record only when its signer is pinned and not revoked and the mesh id is its own; an add older
than a revocation of the same node is ignored, so stale gossip cannot bring a revoked box back.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgpack

from mongars_edge.datadir import DataDir
from mongars_edge.errors import NotFoundError
from mongars_edge.mesh.errors import AuthError, MeshError
from mongars_edge.mesh.identity import Identity, mesh_dir, node_id_of, verify

if TYPE_CHECKING:
    from mongars_edge.mesh.codec import WireRecord

log = logging.getLogger(__name__)

_RECORD_DOMAIN = b"mongars-member-record-v1"
Action = Literal["add", "revoke"]


@dataclass(frozen=True)
class MemberRecord:
    """A signed statement about one node's membership."""

    mesh_id: bytes
    subject: str
    subject_key: bytes
    action: Action
    issued_at: float
    signer: str
    sig: bytes = b""

    def body(self) -> bytes:
        fields = [
            self.mesh_id,
            self.subject,
            self.subject_key,
            self.action,
            self.issued_at,
            self.signer,
        ]
        packed: bytes = msgpack.packb(fields)
        return _RECORD_DOMAIN + packed

    def signed_by(self, identity: Identity) -> MemberRecord:
        return MemberRecord(
            self.mesh_id,
            self.subject,
            self.subject_key,
            self.action,
            self.issued_at,
            identity.node_id,
            identity.sign(self.body()),
        )

    def to_wire(self) -> WireRecord:
        return (
            self.mesh_id,
            self.subject,
            self.subject_key,
            self.action,
            self.issued_at,
            self.signer,
            self.sig,
        )

    @classmethod
    def from_wire(cls, raw: object) -> MemberRecord:
        if not isinstance(raw, list | tuple) or len(raw) != 7:
            raise AuthError("malformed membership record")
        mesh_id, subject, key, action, issued, signer, sig = raw
        ok = (
            isinstance(mesh_id, bytes)
            and isinstance(subject, str)
            and isinstance(key, bytes)
            and len(key) == 32
            and action in ("add", "revoke")
            and isinstance(issued, int | float)
            and not isinstance(issued, bool)
            and isinstance(signer, str)
            and isinstance(sig, bytes)
        )
        if not ok:
            raise AuthError("malformed membership record")
        return cls(mesh_id, subject, key, action, float(issued), signer, sig)


@dataclass
class Member:
    node_id: str
    verify_key: bytes
    added_at: float
    name: str = ""
    #: HOST:PORT this box paired through (`pair --join --peer`): dialled without mDNS.
    address: str = ""


@dataclass
class MeshState:
    """The membership as this box sees it."""

    mesh_id: bytes
    members: dict[str, Member] = field(default_factory=dict)
    revoked: dict[str, float] = field(default_factory=dict)
    records: dict[str, MemberRecord] = field(default_factory=dict)

    def key_of(self, node_id: str) -> bytes | None:
        """The pinned key of a current member, None for strangers and revoked nodes."""
        member = self.members.get(node_id)
        return None if member is None else member.verify_key

    def pin(self, node_id: str, key: bytes, name: str = "") -> None:
        """Pin a node met through pairing (the code authenticated it)."""
        if node_id_of(key) != node_id:
            raise AuthError("node id does not match its key")
        self.revoked.pop(node_id, None)
        self.members[node_id] = Member(node_id, key, time.time(), name)

    def accept(self, record: MemberRecord, me: Identity) -> bool:
        """Apply a record from gossip; True when it changed something. AuthError if forged."""
        if record.mesh_id != self.mesh_id:
            raise AuthError("membership record of another mesh")
        if record.subject == me.node_id:
            return False
        signer_key = me.verify_key if record.signer == me.node_id else self.key_of(record.signer)
        if signer_key is None:
            raise AuthError(f"membership record signed by non-member {record.signer}")
        verify(signer_key, record.body(), record.sig)
        if node_id_of(record.subject_key) != record.subject:
            raise AuthError("membership record names a key that is not the subject's")
        if record.action == "revoke":
            known = self.revoked.get(record.subject)
            if known is not None and known >= record.issued_at:
                return False
            self.revoked[record.subject] = record.issued_at
            self.members.pop(record.subject, None)
            self.records[record.subject] = record
            return True
        revoked_at = self.revoked.get(record.subject)
        if revoked_at is not None and revoked_at >= record.issued_at:
            return False
        if record.subject in self.members:
            return False
        self.revoked.pop(record.subject, None)
        self.members[record.subject] = Member(record.subject, record.subject_key, time.time())
        self.records[record.subject] = record
        return True

    def issue(self, me: Identity, subject: str, key: bytes, action: Action) -> MemberRecord:
        record = MemberRecord(self.mesh_id, subject, key, action, time.time(), me.node_id)
        record = record.signed_by(me)
        self.records[subject] = record
        return record

    def all_records(self) -> list[MemberRecord]:
        return list(self.records.values())

    def to_json(self) -> str:
        data = {
            "mesh_id": self.mesh_id.hex(),
            "members": [
                {**asdict(m), "verify_key": m.verify_key.hex()} for m in self.members.values()
            ],
            "revoked": self.revoked,
            "records": [
                [x.hex() if isinstance(x, bytes) else x for x in r.to_wire()]
                for r in self.records.values()
            ],
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> MeshState:
        data = json.loads(text)
        state = cls(bytes.fromhex(data["mesh_id"]))
        for m in data["members"]:
            key = bytes.fromhex(m["verify_key"])
            state.members[m["node_id"]] = Member(
                m["node_id"], key, m["added_at"], m["name"], str(m.get("address") or "")
            )
        state.revoked = {str(k): float(v) for k, v in data["revoked"].items()}
        for raw in data["records"]:
            mesh_id, subject, key, action, issued, signer, sig = raw
            rec = [bytes.fromhex(mesh_id), subject, bytes.fromhex(key), action, issued, signer]
            state.records[subject] = MemberRecord.from_wire([*rec, bytes.fromhex(sig)])
        return state


def mesh_hash(mesh_id: bytes) -> str:
    """What the mesh id looks like on the network: a hash, never the id itself."""
    return hashlib.sha256(b"mongars-mesh" + mesh_id).hexdigest()[:12]


class MemberFile:
    """The membership file, shared by the server and CLI commands (flock around each change)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = mesh_dir(data_dir)
        self.path = DataDir(data_dir).members
        self._lock_path = DataDir(data_dir).members_lock

    def mtime(self) -> float:
        try:
            return self.path.stat().st_mtime_ns / 1e9
        except FileNotFoundError:
            return 0.0

    def read(self) -> MeshState:
        """The current state; a fresh mesh of one (random mesh id) when there is none yet."""
        try:
            return MeshState.from_json(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, AuthError) as exc:
            raise MeshError(
                f"the membership file {self.path} is damaged ({exc}); move it away and pair again"
            ) from None
        with self.changing() as state:
            return state

    @contextlib.contextmanager
    def changing(self) -> Iterator[MeshState]:
        """Read, let the caller change, write atomically; one changer at a time."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                state = MeshState.from_json(self.path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                state = MeshState(os.urandom(16))
            yield state
            tmp = self.path.with_suffix(".tmp")
            fd2 = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd2, "w", encoding="utf-8") as fh:
                fh.write(state.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            os.close(fd)


def revoke(data_dir: Path, me: Identity, prefix: str) -> str:
    """Unpin the one member whose node id starts with *prefix* and sign its revocation, which
    gossip carries to the other members; returns its node id. NotFoundError if not exactly one."""
    with MemberFile(data_dir).changing() as state:
        matches = [m for m in state.members.values() if m.node_id.startswith(prefix)]
        if len(matches) != 1 or not prefix:
            raise NotFoundError(f"no single member matches {prefix!r}")
        member = matches[0]
        state.issue(me, member.node_id, member.verify_key, "revoke")
        state.members.pop(member.node_id)
        state.revoked[member.node_id] = time.time()
    return member.node_id
