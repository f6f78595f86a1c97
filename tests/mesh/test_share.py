"""Signed adapter manifests: only a pinned member's intact signature is accepted."""

from __future__ import annotations

import msgpack
import pytest

from mongars_edge.mesh.codec import CHUNK_SIZE
from mongars_edge.mesh.errors import AuthError
from mongars_edge.mesh.identity import Identity
from mongars_edge.mesh.share import Manifest

SIGNER = Identity.generate()


def _manifest(**changes: object) -> Manifest:
    fields = {
        "sha256": "ab" * 32,
        "name": "lora",
        "size": CHUNK_SIZE + 10,
        "chunk_size": CHUNK_SIZE,
        "chunks": ["00" * 32, "11" * 32],
        "architecture": "llama",
        "base_model": "smollm2.gguf",
        "signer": SIGNER.node_id,
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


def pins(node_id: str) -> bytes | None:
    return SIGNER.verify_key if node_id == SIGNER.node_id else None


def test_a_members_manifest_is_accepted() -> None:
    signed = _manifest().sign(SIGNER)
    assert Manifest.verified(signed, pins) == _manifest()


def test_forged_tampered_and_inconsistent_manifests_are_refused() -> None:
    stranger = Identity.generate()
    with pytest.raises(AuthError, match="non-member"):
        Manifest.verified(_manifest(signer=stranger.node_id).sign(stranger), pins)
    body, sig = msgpack.unpackb(_manifest().sign(SIGNER))
    tampered = msgpack.packb([body.replace(b"lora", b"evil"), sig])
    with pytest.raises(AuthError, match="bad signature"):
        Manifest.verified(tampered, pins)
    with pytest.raises(AuthError, match="does not add up"):
        Manifest.verified(_manifest(chunks=["00" * 32]).sign(SIGNER), pins)
    for garbage in (b"", b"\x93\x01\x02\x03", msgpack.packb([b"x", b"y"])):
        with pytest.raises(AuthError):
            Manifest.verified(garbage, pins)
