"""Identity files, signed membership records, revoking a member."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mongars_edge.errors import NotFoundError
from mongars_edge.mesh.errors import AuthError
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.members import MemberFile, MemberRecord, revoke


def test_identity_is_created_once_0600(data_dir: Path) -> None:
    first = Identity.load_or_create(data_dir)
    again = Identity.load_or_create(data_dir)
    assert first.node_id == again.node_id
    mode = stat.S_IMODE(os.stat(data_dir / "mesh" / "identity.key").st_mode)
    assert mode == 0o600
    assert len(first.node_id) == 16


def test_records_from_members_apply_forgeries_do_not(data_dir: Path) -> None:
    me, a, c, stranger = (Identity.generate() for _ in range(4))
    files = MemberFile(data_dir)
    with files.changing() as state:
        state.pin(a.node_id, a.verify_key)
        record = MemberRecord(state.mesh_id, c.node_id, c.verify_key, "add", 10.0, a.node_id)
        assert state.accept(record.signed_by(a), me)
        assert state.key_of(c.node_id) == c.verify_key
        forged = MemberRecord(
            state.mesh_id, stranger.node_id, stranger.verify_key, "add", 11.0, a.node_id
        )
        with pytest.raises(AuthError):
            state.accept(forged.signed_by(stranger), me)  # claims a, signed by stranger
        with pytest.raises(AuthError):
            state.accept(
                MemberRecord(
                    state.mesh_id,
                    stranger.node_id,
                    stranger.verify_key,
                    "add",
                    11.0,
                    stranger.node_id,
                ).signed_by(stranger),
                me,
            )
        other_mesh = MemberRecord(b"x" * 16, c.node_id, c.verify_key, "add", 12.0, a.node_id)
        with pytest.raises(AuthError):
            state.accept(other_mesh.signed_by(a), me)
        revoke = MemberRecord(state.mesh_id, c.node_id, c.verify_key, "revoke", 20.0, a.node_id)
        assert state.accept(revoke.signed_by(a), me)
        assert state.key_of(c.node_id) is None
        # stale gossip of the old add cannot bring it back
        assert not state.accept(record.signed_by(a), me)
        assert state.key_of(c.node_id) is None
    state = files.read()
    assert state.key_of(a.node_id) == a.verify_key
    assert c.node_id in state.revoked
    assert stat.S_IMODE(os.stat(files.path).st_mode) == 0o600


def test_revoke_takes_exactly_one_member_by_prefix(data_dir: Path) -> None:
    me, a, b = (Identity.generate() for _ in range(3))
    with MemberFile(data_dir).changing() as state:
        state.pin(a.node_id, a.verify_key)
        state.pin(b.node_id, b.verify_key)
    for prefix in ("", "zz-no-such-node"):  # every member matches "": it names none of them
        with pytest.raises(NotFoundError, match="no single member matches"):
            revoke(data_dir, me, prefix)
    assert revoke(data_dir, me, a.node_id[:6]) == a.node_id
    state = MemberFile(data_dir).read()
    assert state.key_of(a.node_id) is None and a.node_id in state.revoked
    assert state.records[a.node_id].action == "revoke"
    assert state.records[a.node_id].signer == me.node_id
    assert state.key_of(b.node_id) == b.verify_key
