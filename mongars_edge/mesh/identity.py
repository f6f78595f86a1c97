"""Node identity: an Ed25519 signing key kept 0600 in the data dir; node id = key fingerprint.

The X25519 key that goes with it is derived from the same seed (libsodium's conversion), so
one secret file holds both. Session keys are ephemeral X25519 keys signed with this identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from mongars_edge.datadir import DataDir
from mongars_edge.mesh.errors import AuthError, MeshError

NODE_ID_LEN = 16  # hex digits: 64 bits of the key fingerprint


def mesh_dir(data_dir: Path) -> Path:
    """Where the mesh keeps keys and membership (0700)."""
    path = DataDir(data_dir).mesh
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def node_id_of(verify_key: bytes) -> str:
    """The node id of a public signing key: a short fingerprint people can compare."""
    return hashlib.sha256(b"mongars-node-id" + verify_key).hexdigest()[:NODE_ID_LEN]


def verify(verify_key: bytes, message: bytes, signature: bytes) -> None:
    """Check a detached Ed25519 signature; AuthError if it does not hold."""
    try:
        VerifyKey(verify_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError) as exc:
        raise AuthError(f"bad signature ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Identity:
    """This box's long-term keys."""

    signing_key: SigningKey

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def node_id(self) -> str:
        return node_id_of(self.verify_key)

    @property
    def x25519(self) -> PrivateKey:
        return PrivateKey(bytes(self.signing_key.to_curve25519_private_key()))

    def sign(self, message: bytes) -> bytes:
        """A detached signature of `message`."""
        return bytes(self.signing_key.sign(message).signature)

    @classmethod
    def generate(cls) -> Identity:
        return cls(SigningKey.generate())

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """Read the key file, or create it (0600) on first start; two racing creators agree."""
        mesh_dir(data_dir)
        path = DataDir(data_dir).identity
        seed = bytes(SigningKey.generate())
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, seed.hex().encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            text = path.read_text(encoding="ascii").strip()
            key = SigningKey(bytes.fromhex(text))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise MeshError(
                f"the mesh identity {path} is unreadable ({exc}); move it away to make a new one "
                "(this box will then have to pair again)"
            ) from None
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)
        return cls(key)
