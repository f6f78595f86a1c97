"""The data dir: private files whatever the umask, and one clear line for a wrong one."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mongars_edge.datadir import DataDir, create_private, write_private
from tests.support.env import clean_env, run_cli

NOBODY = 65534
_CLI = (sys.executable, "-m", "mongars_edge")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _users_add(data_dir: Path, *, umask: int = 0o022, cwd: Path | None = None) -> None:
    result = subprocess.run(
        [*_CLI, "users", "add", "ana", "--password-stdin", "--data-dir", str(data_dir)],
        input="a long password\n",
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=cwd,
        preexec_fn=lambda: os.umask(umask),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_users_add_creates_a_database_only_its_owner_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _users_add(data, umask=0o000)  # the most permissive umask there is
    for name in ("mongars.db", "mongars.db-wal", "mongars.db-shm"):
        path = data / name
        if path.exists():  # WAL files may be gone after a clean close
            assert _mode(path) == 0o600, (name, oct(_mode(path)))
    assert _mode(data) & 0o007 == 0


def test_an_existing_world_readable_database_is_closed_to_others(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _users_add(data)
    (data / "mongars.db").chmod(0o644)  # what an older version left on a 0022 umask
    result = run_cli("users", "list", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert _mode(data / "mongars.db") == 0o640


def test_private_writes_ignore_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "state.json", "{}")
        create_private(tmp_path / "db")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "state.json") == 0o600
    assert _mode(tmp_path / "db") == 0o600


def test_dot_means_the_current_directory(tmp_path: Path) -> None:
    # `--data-dir .` used to mean "unset" (and /var/lib/mongars-edge as root).
    _users_add(Path("."), cwd=tmp_path)
    assert (tmp_path / "mongars.db").is_file()


def test_a_file_as_data_dir_is_one_line_exit_2(tmp_path: Path) -> None:
    thing = tmp_path / "notes.txt"
    thing.write_text("x")
    result = run_cli("users", "list", "--data-dir", str(thing))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is not a directory" in result.stderr


def test_a_data_dir_that_does_not_exist_is_one_line_for_commands_that_need_a_box(
    tmp_path: Path,
) -> None:
    missing = tmp_path / ".dta"  # a typo of .data
    for args in (("users", "list"), ("tokens", "create", "ana"), ("peers",)):
        result = run_cli(*args, "--data-dir", str(missing))
        assert result.returncode == 2, args
        assert result.stderr.count("\n") == 1, result.stderr
        assert "no box keeps its data in" in result.stderr and "--data-dir" in result.stderr
    assert not missing.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_a_data_dir_of_another_user_is_one_line_saying_as_whom_to_run() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as top:  # pytest's tmp is root-only
        base = Path(top)
        base.chmod(0o755)
        data = base / "data"
        _users_add(data)
        data.chmod(0o755)
        hidden = base / "hidden"
        hidden.mkdir(mode=0o700)
        for target, expected in (
            (data, ("belongs to root", "run the command as root")),
            (hidden / "data", ("permission denied", "--data-dir")),
        ):
            result = _as_nobody("users", "list", "--data-dir", str(target), home=base)
            assert result.returncode == 2, result.stderr
            line = result.stderr.strip()
            assert "\n" not in line and "Traceback" not in line
            assert all(part in line for part in expected), line


def _as_nobody(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*command, sys.executable, "-m", "mongars_edge", *args],
        capture_output=True,
        text=True,
        env=clean_env(HOME=str(home)),
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="root acting as the owner of the data dir")
def test_root_acts_as_the_owner_of_the_data_dir(tmp_path: Path) -> None:
    # The appliance: /var/lib/mongars-edge belongs to the service user; a root shell adding a
    # user must not leave root-owned database files the service cannot open.
    data = tmp_path / "data"
    data.mkdir()
    tmp_path.chmod(0o755)
    os.chown(data, NOBODY, NOBODY)
    _users_add(data)
    for path in data.iterdir():
        assert path.stat().st_uid == NOBODY, path


def test_data_dir_names_each_path_once(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    names = [n for n, v in vars(DataDir).items() if isinstance(v, property)]
    paths = [getattr(data, n) for n in names]
    assert len(set(paths)) == len(paths) == len(names)
    assert all(p.is_relative_to(tmp_path) and p != tmp_path for p in paths)
