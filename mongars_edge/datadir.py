"""The data directory: every path in it (`DataDir`), checked before a command touches it, and
private files created private.

The database holds every conversation and the mesh keys let a box into the mesh, so they are
created owner-only whatever the umask (the appliance's unit sets UMask=0027; a development box
usually has 0022).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mongars_edge.errors import MongarsError

log = logging.getLogger(__name__)

#: Commands that act on a box's existing data: a data dir that does not exist is a mistake.
NEEDS_BOX: Final = frozenset(
    {
        "users list",
        "tokens create",
        "memory search",
        "memory list",
        "memory forget",
        "memory export",
        "peers",
        "peers remove",
    }
)
#: Commands that only read from the data dir (or talk to the server): they never write there.
READERS: Final = frozenset({"tui", "chat", "probe", "doctor"})


@dataclass(frozen=True)
class DataDir:
    """Every path under a box's data directory, named here and nowhere else."""

    root: Path

    @property
    def database(self) -> Path:
        """SQLite: users, conversations, memories and their vectors."""
        return self.root / "mongars.db"

    @property
    def models(self) -> Path:
        """Chat models pulled from the catalog (GGUF)."""
        return self.root / "models"

    @property
    def stt(self) -> Path:
        """Whisper models pulled from the catalog."""
        return self.root / "stt"

    @property
    def adapters(self) -> Path:
        """LoRA adapters by sha256, local and fetched from peers."""
        return self.root / "adapters"

    @property
    def voices(self) -> Path:
        """Piper voices pulled from the catalog."""
        return self.root / "voices"

    @property
    def mesh(self) -> Path:
        """The mesh's private files (0700)."""
        return self.root / "mesh"

    @property
    def identity(self) -> Path:
        """This box's Ed25519 key (0600)."""
        return self.mesh / "identity.key"

    @property
    def members(self) -> Path:
        """Pinned members and signed membership records (0600, flock)."""
        return self.mesh / "members.json"

    @property
    def members_lock(self) -> Path:
        """The flock that serialises changes to `members` between the server and the CLI."""
        return self.mesh / "members.lock"

    @property
    def mesh_state(self) -> Path:
        """What the running server tells the CLI about its peers, rewritten every second."""
        return self.mesh / "state.json"

    @property
    def trt_cache(self) -> Path:
        """TensorRT engines ONNX Runtime built for the voices, one folder per model."""
        return self.root / "trt-cache"

    @property
    def local_admin_token(self) -> Path:
        """The token local CLI clients (chat, tui) use as the admin (0600)."""
        return self.root / "local-admin.token"

    @property
    def tuning_profile(self) -> Path:
        """The profile `mongars-edge bench` measured; it wins over the probed one."""
        return self.root / "tuning.json"

    @property
    def firstboot_problems(self) -> Path:
        """Written by the first-boot unit, one problem per line; shown on /health."""
        return self.root / "firstboot-problems.txt"


class DataDirError(MongarsError, OSError):
    """The data directory given (or found) cannot be used by this command."""

    kind = "data_dir"
    exit_code = 2


def check(path: Path, command: str) -> Callable[[], None] | None:
    """Stop *command* with one line when *path* cannot be its data dir.

    Run as root in a directory that belongs to another user (the appliance's service user),
    the command may go on; what it creates there must then be given to that user, or the
    service could not open it: the returned callable does that once the command is done.
    """
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        info = None
    except PermissionError:
        if command in READERS:
            return None  # they say themselves what they could not read (the TUI: exit 77)
        raise DataDirError(
            f"cannot reach the data dir {path} (permission denied); run the command as the "
            "user the box runs as, or give a data dir of your own with --data-dir"
        ) from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise DataDirError(
            f"the data dir {path} is not a directory; give the directory the box keeps its "
            "data in (the --data-dir `serve` was started with)"
        )
    if info is None:
        if command in NEEDS_BOX:
            raise DataDirError(
                f"no box keeps its data in {path} (no such directory); give the --data-dir "
                f"`serve` was started with, or start a box there: mongars-edge serve "
                f"--data-dir {path}"
            )
        return None
    me = os.geteuid()
    if command in READERS or info.st_uid == me:
        return None
    if me == 0:
        before = set(_owned_by(path, 0))
        return lambda: _give_back(path, info.st_uid, info.st_gid, before)
    if not os.access(path, os.W_OK | os.X_OK):
        name = _user_name(info.st_uid)
        raise DataDirError(
            f"the data dir {path} belongs to {name} and {_user_name(me)} cannot write to it; "
            f"run the command as {name} (sudo -u {name} mongars-edge {command} ...) or give a "
            "data dir of your own with --data-dir"
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owned_by(root: Path, uid: int) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            with contextlib.suppress(OSError):
                if path.lstat().st_uid == uid:
                    yield path


def _give_back(root: Path, uid: int, gid: int, before: set[Path]) -> None:
    """Give what root created under *root* to its owner (SQLite does so for its -wal/-shm)."""
    # Not setuid to the owner instead: the code still to be imported may live where that
    # user cannot read (a Python under /root on a development box).
    for path in _owned_by(root, 0):
        if path not in before:
            try:
                os.chown(path, uid, gid, follow_symlinks=False)
            except OSError as exc:
                log.warning("cannot give %s to %s: %s", path, _user_name(uid), exc.strerror)


def make_dir(path: Path) -> None:
    """Create a data directory (and its parents); the new directory is closed to others."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o750)
    except FileExistsError:
        raise DataDirError(f"the data dir {path} is not a directory") from None
    except OSError as exc:
        raise DataDirError(
            f"cannot create the data directory {path}: {exc.strerror}; choose another with "
            "--data-dir"
        ) from None


def create_private(path: Path, mode: int = 0o600) -> None:
    """Create *path* empty with *mode* unless it exists; an existing one loses others' access.

    SQLite gives its -wal and -shm files the mode of the database file, so creating the
    database this way keeps all three private.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
        return
    try:
        current = path.stat().st_mode & 0o777
        if current & 0o007 and path.stat().st_uid == os.geteuid():
            os.chmod(path, current & ~0o007)
            log.warning("%s was readable by every user; it is now %o", path, current & ~0o007)
    except OSError as exc:
        log.debug("cannot tighten the mode of %s: %s", path, exc)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace *path* atomically with *text*, created with *mode* whatever the umask."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # an old temporary file keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
