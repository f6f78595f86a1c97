"""Catalog and downloads against a real local HTTP server (port 0 on loopback)."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mongars_edge.inference import models as m
from mongars_edge.inference.errors import (
    ChecksumMismatchError,
    DiskFullError,
    DownloadCancelledError,
    DownloadError,
    ModelLoadError,
    ModelNotFoundError,
)


class _Server:
    """Serves files with Range support; can cut a response after `cut_after` bytes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cut_after: int | None = None
        self.ranges: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    server.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    server.cut_after = None
                    self.connection.close()
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # a cancelled client hangs up mid-body

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path, models: dict[str, Path]) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.gguf").write_bytes(models["tiny"].read_bytes())
    (root / "notgguf.gguf").write_bytes(b"hello" * 1000)
    srv = _Server(root)
    yield srv
    srv.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry(
    server: _Server, name: str = "tiny.gguf", digest: str = "", **kw: object
) -> m.CatalogEntry:
    fields: dict[str, object] = {
        "id": "tiny",
        "name": "Tiny",
        "tier": "tiny",
        "min_ram_mb": 64,
        "context_length": 2048,
        "licence": "test",
        "filename": "tiny.gguf",
        "url": f"{server.url}/{name}",
        "sha256": digest,
    }
    fields.update(kw)
    return m.CatalogEntry(**fields)  # type: ignore[arg-type]


def store(data_dir: Path, *entries: m.CatalogEntry) -> m.ModelStore:
    return m.ModelStore(data_dir, {e.id: e for e in entries})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_the_shipped_catalog_parses_and_the_default_is_embedded() -> None:
    catalog = m.load_catalog()
    default = catalog[m.DEFAULT_MODEL]
    assert default.embedded
    assert len(default.sha256) == 64
    for wanted in ("qwen2.5-0.5b-instruct", "llama-3.2-1b-instruct", "gemma-3-1b-it"):
        assert catalog[wanted].url.startswith("https://huggingface.co/")
    path = m.package_file(default.package, default.filename)
    assert path is not None
    assert path.stat().st_size == default.size_bytes


def test_pull_verifies_and_renames_atomically(
    server: _Server, data_dir: Path, models: dict[str, Path]
) -> None:
    seen: list[tuple[int, int]] = []
    s = store(data_dir, entry(server, digest=sha(models["tiny"])))
    path = s.pull("tiny", progress=lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == models["tiny"].read_bytes()
    assert leftovers(path.parent) == ["tiny.gguf"]
    assert seen[-1][0] == seen[-1][1] == path.stat().st_size
    assert [x.id for x in s.list() if x.installed] == ["tiny"]
    assert s.resolve("tiny") == ("tiny", path)
    s.remove("tiny")
    assert leftovers(path.parent) == []
    with pytest.raises(ModelNotFoundError, match="models pull tiny"):
        s.resolve("tiny")


def test_interrupted_pull_resumes_with_range(
    server: _Server, data_dir: Path, models: dict[str, Path]
) -> None:
    s = store(data_dir, entry(server, digest=sha(models["tiny"])))
    server.cut_after = 1_000_000
    with pytest.raises(DownloadError, match="resume"):
        s.pull("tiny")
    part = data_dir / "models" / "tiny.gguf.part"
    assert part.stat().st_size == 1_000_000
    path = s.pull("tiny")
    assert server.ranges == ["bytes=1000000-"]
    assert sha(path) == sha(models["tiny"])
    assert not part.exists()


def test_cancel_keeps_the_part_for_a_range_resume(
    server: _Server, data_dir: Path, models: dict[str, Path]
) -> None:
    cancel = threading.Event()

    def progress(done: int, _total: int) -> None:
        if done >= 1_000_000:
            cancel.set()

    s = store(data_dir, entry(server, digest=sha(models["tiny"])))
    with pytest.raises(DownloadCancelledError, match="run it again to resume"):
        s.pull("tiny", progress=progress, cancel=cancel)
    part = data_dir / "models" / "tiny.gguf.part"
    kept = part.stat().st_size
    assert kept >= 1_000_000
    assert sha(s.pull("tiny")) == sha(models["tiny"])
    assert server.ranges == [f"bytes={kept}-"]


def test_sha_mismatch_leaves_nothing(server: _Server, data_dir: Path) -> None:
    s = store(data_dir, entry(server, digest="0" * 64))
    with pytest.raises(ChecksumMismatchError):
        s.pull("tiny")
    assert leftovers(data_dir / "models") == []


def test_unpinned_pull_records_its_digest(
    server: _Server, data_dir: Path, models: dict[str, Path]
) -> None:
    path = store(data_dir, entry(server)).pull("tiny")
    recorded = path.with_name("tiny.gguf.sha256").read_text().strip()
    assert recorded == sha(models["tiny"])


def test_not_a_gguf_is_refused(server: _Server, data_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        store(data_dir, entry(server, name="notgguf.gguf")).pull("tiny")
    assert leftovers(data_dir / "models") == []


def test_missing_file_on_server(server: _Server, data_dir: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        store(data_dir, entry(server, name="nope.gguf")).pull("tiny")


def test_not_enough_space_is_refused_before_download(
    server: _Server, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real full disk cannot be made safely here; shrink what the OS reports instead.
    import shutil

    monkeypatch.setattr(m.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(1, 1, 1))  # type: ignore[attr-defined]
    with pytest.raises(DiskFullError):
        store(data_dir, entry(server)).pull("tiny")
    assert leftovers(data_dir / "models") == []


def test_disk_full_mid_download_removes_the_part(server: _Server, data_dir: Path) -> None:
    # /dev/full fails every write with ENOSPC: point the part file at it through a symlink.
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    folder = data_dir / "models"
    folder.mkdir()
    (folder / "tiny.gguf.part").symlink_to("/dev/full")
    # An empty symlinked part looks like a fresh start: the first write hits ENOSPC.
    with pytest.raises(DiskFullError, match="filled up"):
        store(data_dir, entry(server)).pull("tiny")
    assert leftovers(folder) == []


def test_resolve_paths_and_unknown_ids(data_dir: Path, models: dict[str, Path]) -> None:
    s = m.ModelStore(data_dir)
    assert s.resolve(str(models["tiny"])) == ("tiny", models["tiny"])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        s.resolve(str(data_dir / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="known:"):
        s.resolve("no-such-model")
    with pytest.raises(ModelNotFoundError, match="cannot be removed"):
        s.remove(m.DEFAULT_MODEL)


def test_models_an_image_ships_are_found_and_kept(
    data_dir: Path, tmp_path: Path, models: dict[str, Path]
) -> None:
    """The Pi image and the Jetson overlay carry models read-only under /usr/share: found there,
    never downloaded again, never removed."""
    from mongars_edge.inference.pypi import WheelPart
    from tests.inference.wheel_index import Index

    entry = m.CatalogEntry(
        id="shipped",
        name="Shipped",
        tier="tiny",
        min_ram_mb=64,
        licence="test",
        filename="shipped.gguf",
        sha256="0" * 64,
        size_bytes=1,
        parts=(WheelPart("nowhere-part1", "1.0.0", "0" * 64),),
    )
    system = tmp_path / "usr-share"
    (system / "models").mkdir(parents=True)
    shipped = system / "models" / "shipped.gguf"
    shipped.write_bytes(models["tiny"].read_bytes())
    closed = Index()
    closed.close()  # nothing answers there: a download would fail
    store = m.ModelStore(data_dir, {"shipped": entry}, pypi_index=closed.url, system_dir=system)
    assert store.resolve("shipped") == ("shipped", shipped)
    assert store.pull("shipped") == shipped
    with pytest.raises(ModelNotFoundError, match="ships with this box's image"):
        store.remove("shipped")
    assert shipped.is_file()


def test_a_path_to_a_catalog_models_file_keeps_its_catalog_id(tmp_path: Path) -> None:
    """`--model .data/models/<catalog file>` is that catalog model (its sampling defaults and
    persona), wherever the file lies; any other GGUF is named by its file."""
    s = m.ModelStore(tmp_path / "data")
    entry = s.catalog["qwen2.5-coder-0.5b-instruct"]
    copy = tmp_path / "elsewhere" / entry.filename
    copy.parent.mkdir()
    copy.write_bytes(b"GGUF")
    other = tmp_path / "elsewhere" / "mine.gguf"
    other.write_bytes(b"GGUF")
    assert s.resolve(str(copy)) == (entry.id, copy)
    assert s.resolve(str(other)) == ("mine", other)
