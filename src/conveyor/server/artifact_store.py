"""Where artifact content lives: a content-addressed store, keyed by the content's SHA-256.

The database holds what an artifact is (build, job, path, size, SHA-256); the store holds its
bytes once, however many artifacts have them. `ArtifactStore` is what the server needs of a
store; `FileArtifactStore` keeps the content in a directory (by default `artifacts/` in the
server's data dir). A store elsewhere (S3-compatible object storage, say) implements the same
three calls.

Content is streamed both ways: the server never holds a whole file in memory, and file work is
done in worker threads, never on the event loop.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import IO, Protocol

import anyio
import anyio.to_thread

from conveyor.errors import ConveyorError

# Bytes handed to a worker thread at a time: few thread hops, bounded memory.
CHUNK_SIZE = 1024 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ContentError(ConveyorError):
    """What arrived is not what the uploader announced (its size or its SHA-256)."""


class ArtifactStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, size: int, sha256: str) -> None:
        """Store the bytes of `chunks`, which must be exactly `size` bytes with SHA-256
        `sha256`. Otherwise raise `ContentError`, having stored nothing; the stream is not read
        past `size` bytes. Content the store has already is stored again, harmlessly."""
        ...

    async def exists(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> AsyncIterator[bytes]:
        """The content, in chunks; `FileNotFoundError` on the first read if there is none."""
        ...


def check_sha256(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 in lowercase hex: {sha256!r}")
    return sha256


class FileArtifactStore:
    """Content at `<root>/sha256/<first two hex digits>/<the other 62>`.

    An upload is written to a temporary file in `<root>/tmp` (the same file system), hashed as
    it is written, synced, and renamed into place only once size and hash are right: a reader
    never sees a partial file, and a crash leaves at most a stray temporary file.
    """

    def __init__(self, root: Path):
        self.root = root

    def path_of(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.root / "sha256" / sha256[:2] / sha256[2:]

    async def put(self, chunks: AsyncIterable[bytes], *, size: int, sha256: str) -> None:
        final = self.path_of(sha256)
        file, name = await anyio.to_thread.run_sync(_create_temp, self.root / "tmp")
        try:
            await _receive(chunks, file, size=size, sha256=sha256)
            await anyio.to_thread.run_sync(_commit, file, name, final)
        except BaseException:
            # Also when the upload is cancelled (the client went away): no stray file is left.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard, file, name)
            raise

    async def exists(self, sha256: str) -> bool:
        return await anyio.Path(self.path_of(sha256)).is_file()

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        path = self.path_of(sha256)
        file = await anyio.to_thread.run_sync(_open_for_reading, path)
        try:
            while chunk := await anyio.to_thread.run_sync(file.read, CHUNK_SIZE):
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(file.close)


async def _receive(
    chunks: AsyncIterable[bytes], file: IO[bytes], *, size: int, sha256: str
) -> None:
    """Write `chunks` to `file`, hashing them; `ContentError` unless they are `size` bytes with
    SHA-256 `sha256` (nothing more is read once they are too many)."""
    digest = hashlib.sha256()
    received = 0
    buffer = bytearray()
    async for piece in chunks:
        received += len(piece)
        if received > size:
            raise ContentError(f"the body is larger than the {size} bytes announced")
        buffer += piece
        if len(buffer) >= CHUNK_SIZE:
            data, buffer = buffer, bytearray()
            await anyio.to_thread.run_sync(_write, file, digest, data)
    if buffer:
        await anyio.to_thread.run_sync(_write, file, digest, buffer)
    if received != size:
        raise ContentError(f"{received} bytes arrived, but {size} were announced")
    if digest.hexdigest() != sha256:
        raise ContentError(
            f"the content's SHA-256 is {digest.hexdigest()}, but {sha256} was announced"
        )


def _create_temp(directory: Path) -> tuple[IO[bytes], str]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, suffix=".part")
    return os.fdopen(fd, "wb"), name


def _write(file: IO[bytes], digest: hashlib._Hash, data: bytearray) -> None:
    digest.update(data)
    file.write(data)


def _commit(file: IO[bytes], name: str, final: Path) -> None:
    file.flush()
    # On disk before it has its name: a crash never leaves a short file under a content's hash.
    os.fsync(file.fileno())
    file.close()
    final.parent.mkdir(parents=True, exist_ok=True)
    Path(name).replace(final)


def _discard(file: IO[bytes], name: str) -> None:
    file.close()
    Path(name).unlink(missing_ok=True)


def _open_for_reading(path: Path) -> IO[bytes]:
    return path.open("rb")
