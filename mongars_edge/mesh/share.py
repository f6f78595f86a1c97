"""Adapter sharing: LoRA files move peer to peer by sha256 in chunks, checked against a manifest.

The manifest (sha256, size, chunk hashes, name, base model) is signed by the member that
serves it; a fetching box accepts it only from a pinned member, checks every chunk against it
and the whole file against the sha256 asked for, and only then puts it in its AdapterStore.
A request naming an adapter this box lacks fetches it on demand from the box that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgpack

from mongars_edge.inference.adapters import Adapter, AdapterStore
from mongars_edge.mesh import codec
from mongars_edge.mesh.codec import CHUNK_SIZE
from mongars_edge.mesh.errors import AuthError, MeshError, PeerTimeoutError, PeerUnavailableError
from mongars_edge.mesh.identity import Identity, verify

if TYPE_CHECKING:
    from mongars_edge.mesh.node import NodeState
    from mongars_edge.mesh.transport import Link

log = logging.getLogger(__name__)

_DOMAIN: Final = b"mongars-adapter-manifest-v1"
MAX_ADAPTER_BYTES: Final = 2 * 1024**3
CHUNK_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True)
class Manifest:
    sha256: str
    name: str
    size: int
    chunk_size: int
    chunks: list[str]
    architecture: str
    base_model: str
    signer: str

    def body(self) -> bytes:
        packed: bytes = msgpack.packb(list(asdict(self).values()))
        return _DOMAIN + packed

    def sign(self, me: Identity) -> bytes:
        packed: bytes = msgpack.packb([self.body(), me.sign(self.body())])
        return packed

    @classmethod
    def verified(cls, data: bytes, key_of: Any) -> Manifest:
        """Parse and check a signed manifest; AuthError unless a pinned member signed it."""
        try:
            body, sig = msgpack.unpackb(data)
            fields = msgpack.unpackb(body[len(_DOMAIN) :])
            manifest = cls(*fields)
        except Exception as exc:
            raise AuthError(f"malformed adapter manifest ({type(exc).__name__})") from None
        if not body.startswith(_DOMAIN) or not isinstance(manifest.signer, str):
            raise AuthError("malformed adapter manifest")
        key = key_of(manifest.signer)
        if key is None:
            raise AuthError(f"adapter manifest signed by non-member {manifest.signer}")
        verify(key, body, sig)
        ok = (
            isinstance(manifest.size, int)
            and 0 < manifest.size <= MAX_ADAPTER_BYTES
            and manifest.chunk_size == CHUNK_SIZE
            and isinstance(manifest.chunks, list)
            and len(manifest.chunks) == -(-manifest.size // CHUNK_SIZE)
        )
        if not ok:
            raise AuthError("adapter manifest does not add up")
        return manifest


def build_manifest(path: Path, adapter: Adapter, signer: str) -> Manifest:
    chunks = []
    with path.open("rb") as fh:
        while block := fh.read(CHUNK_SIZE):
            chunks.append(hashlib.sha256(block).hexdigest())
    return Manifest(
        adapter.sha256,
        adapter.name,
        adapter.size_bytes,
        CHUNK_SIZE,
        chunks,
        adapter.architecture,
        adapter.base_model,
        signer,
    )


class Share:
    """Serves and fetches adapters over mesh links."""

    def __init__(self, node: NodeState) -> None:
        self.node = node
        self.store = AdapterStore(node.data_dir)
        self._manifests: dict[str, bytes] = {}
        self._waiting: dict[tuple[int, int], asyncio.Future[codec.Chunk]] = {}
        self._fetching: dict[str, asyncio.Task[str]] = {}
        self._held: list[str] = []
        self._held_mtime = -1.0

    def held(self) -> list[str]:
        """sha256 of every adapter stored here (cached on the directory's mtime)."""
        try:
            mtime = self.store.dir.stat().st_mtime
        except OSError:
            return []
        if mtime != self._held_mtime:
            self._held = [a.sha256 for a in self.store.list()]
            self._held_mtime = mtime
        return self._held

    def handle(self, link: Link, msg: codec.Msg) -> None:
        if isinstance(msg, codec.Chunk):
            future = self._waiting.pop((id(link), msg.request_id), None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, codec.ChunkRequest):
            self.node.spawn(self._serve(link, msg))

    async def _serve(self, link: Link, req: codec.ChunkRequest) -> None:
        data = b""
        try:
            data = await asyncio.to_thread(self._read, req.sha256, req.index)
        except (MeshError, OSError, ValueError) as exc:
            log.debug("cannot serve %s chunk %d: %s", req.sha256[:12], req.index, exc)
        with contextlib.suppress(PeerUnavailableError):
            link.send(codec.Chunk(req.request_id, req.sha256, req.index, data))
            await link.drain()

    def _read(self, sha: str, index: int) -> bytes:
        adapter = next((a for a in self.store.list() if a.sha256 == sha), None)
        if adapter is None:
            return b""
        path = self.store.dir / f"{sha}.gguf"
        if index < 0:
            if sha not in self._manifests:
                manifest = build_manifest(path, adapter, self.node.me.node_id)
                self._manifests[sha] = manifest.sign(self.node.me)
            return self._manifests[sha]
        with path.open("rb") as fh:
            fh.seek(index * CHUNK_SIZE)
            return fh.read(CHUNK_SIZE)

    async def ensure(self, link: Link, ref: str) -> str:
        """The adapter's sha256, fetching it from `link` first when this box lacks it."""
        if ref in self.held() or len(ref) != 64:
            return ref
        task = self._fetching.get(ref)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(link, ref))
            self._fetching[ref] = task
            task.add_done_callback(lambda _t: self._fetching.pop(ref, None))
        return await asyncio.shield(task)

    async def _ask(self, link: Link, sha: str, index: int) -> bytes:
        rid = link.new_id()
        future: asyncio.Future[codec.Chunk] = asyncio.get_running_loop().create_future()
        self._waiting[(id(link), rid)] = future
        try:
            link.send(codec.ChunkRequest(rid, sha, index))
            await link.drain()
            async with asyncio.timeout(CHUNK_TIMEOUT_S):
                closed: asyncio.Future[Any] = asyncio.ensure_future(link.closed.wait())
                waiters: set[asyncio.Future[Any]] = {future, closed}
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closed.cancel()
            if not future.done():
                raise PeerUnavailableError(f"link to {link.peer_id} closed during a transfer")
            chunk = future.result()
        except TimeoutError:
            raise PeerTimeoutError(f"{link.peer_id} did not send chunk {index}") from None
        finally:
            self._waiting.pop((id(link), rid), None)
        if chunk.sha256 != sha or chunk.index != index or not chunk.data:
            raise MeshError(f"{link.peer_id} does not have adapter {sha[:12]}")
        return chunk.data

    async def _fetch(self, link: Link, sha: str) -> str:
        started = time.monotonic()
        raw = await self._ask(link, sha, -1)
        manifest = Manifest.verified(raw, self.node.key_of)
        if manifest.sha256 != sha:
            raise AuthError("adapter manifest is for another file")
        self.store.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.store.dir / f"{sha}.part"
        whole = hashlib.sha256()
        try:
            with tmp.open("wb") as fh:
                for index, expected in enumerate(manifest.chunks):
                    data = await self._ask(link, sha, index)
                    if hashlib.sha256(data).hexdigest() != expected:
                        raise AuthError(f"adapter chunk {index} does not match its manifest")
                    whole.update(data)
                    await asyncio.to_thread(fh.write, data)
            if whole.hexdigest() != sha:
                raise AuthError("fetched adapter does not have the sha256 asked for")
            await asyncio.to_thread(self._install, tmp, manifest)
        finally:
            tmp.unlink(missing_ok=True)
        log.info(
            "fetched adapter %s (%d bytes) from %s in %.1f s",
            manifest.name,
            manifest.size,
            link.peer_id,
            time.monotonic() - started,
        )
        return sha

    def _install(self, tmp: Path, manifest: Manifest) -> None:
        final = self.store.dir / f"{manifest.sha256}.gguf"
        os.replace(tmp, final)
        names = {a.name for a in self.store.list()}
        name = (
            manifest.name
            if manifest.name not in names
            else f"{manifest.name}-{manifest.sha256[:6]}"
        )
        adapter = Adapter(
            id=manifest.sha256[:12],
            sha256=manifest.sha256,
            name=name,
            architecture=manifest.architecture,
            base_model=manifest.base_model,
            size_bytes=manifest.size,
            added_at=time.time(),
        )
        card = self.store.dir / f"{manifest.sha256}.json"
        card.with_suffix(".json.tmp").write_text(json.dumps(asdict(adapter)), encoding="utf-8")
        os.replace(card.with_suffix(".json.tmp"), card)
