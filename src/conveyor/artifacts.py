"""The job side of artifacts: find files by glob, upload them, download a build's artifacts.

Used by `conveyor artifact …` inside a job, and by the agent for a step's `artifact_paths`.
Files are streamed both ways, never held in memory whole. Walking directories, hashing, reading
and writing run in worker threads: an agent's event loop, which serves its other workers too,
never waits on a disk.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread
import httpx

from conveyor import protocol as p
from conveyor.artifact_paths import compile_glob, glob_segments, is_magic, path_problem
from conveyor.client import ARTIFACT, JobClient, retrying
from conveyor.errors import APIError, ConveyorError

# Bytes read or written per worker-thread call: few thread hops, bounded memory.
CHUNK_SIZE = 1024 * 1024
# Uploads in flight at once: many small files are not sent one round trip after another.
UPLOAD_CONCURRENCY = 4

Say = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class LocalFile:
    path: str
    """The artifact path: relative to the upload's root, `/`-separated."""
    file: Path


@dataclass
class Found:
    files: list[LocalFile] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    """Globs that matched no file."""


def check_globs(globs: Sequence[str]) -> None:
    """Refuse, before anything is read, a glob that reaches outside the upload's root."""
    for glob in globs:
        try:
            glob_segments(glob)
        except ValueError as exc:
            raise ConveyorError(f"artifact glob {exc}") from None


def find_files(root: Path, globs: Sequence[str]) -> Found:
    """The regular files under `root` that `globs` match (each file once, in glob order).

    Blocking: run it in a worker thread. Symbolic links to files are followed; links to
    directories are not walked into, so a link loop cannot make the walk endless.
    """
    check_globs(globs)
    found = Found()
    seen: set[str] = set()
    for glob in globs:
        matched = False
        for rel in _matches(root, glob):
            matched = True
            if rel in seen:
                continue
            problem = path_problem(rel)
            if problem is None and _undecodable(rel):
                problem = "is not valid UTF-8"
            if problem is not None:
                raise ConveyorError(f"cannot upload {rel!r}: its path {problem}")
            seen.add(rel)
            found.files.append(LocalFile(rel, root / rel))
        if not matched:
            found.unmatched.append(glob)
    return found


def _undecodable(name: str) -> bool:
    """True for a file name that was not UTF-8 on disk (Python keeps its bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _matches(root: Path, glob: str) -> Iterator[str]:
    segments = glob_segments(glob)
    pattern = compile_glob(glob)
    literal: list[str] = []
    for segment in segments:
        if is_magic(segment):
            break
        literal.append(segment)
    if len(literal) == len(segments):
        rel = "/".join(segments)
        if (root / rel).is_file():
            yield rel
        return
    base = root.joinpath(*literal)
    # Without `**` a glob matches at one depth only: no need to walk deeper.
    max_depth = None if "**" in segments else len(segments)
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if here == "." else here + "/"
        depth = prefix.count("/")
        dirnames.sort()
        if max_depth is not None and depth + 1 >= max_depth:
            dirnames.clear()
        for name in sorted(filenames):
            rel = prefix + name
            if pattern.fullmatch(rel) and (root / rel).is_file():
                yield rel


async def upload(job: JobClient, root: Path, globs: Sequence[str], say: Say) -> int:
    """Upload the files under `root` that `globs` match, as this job's artifacts; each upload
    is reported through `say`. Returns how many were uploaded; raises `ConveyorError` naming
    those that could not be, after trying them all. A glob matching nothing is a warning."""
    found = await anyio.to_thread.run_sync(find_files, root, globs)
    for glob in found.unmatched:
        await say(f"warning: no files match {glob!r}")
    if not found.files:
        return 0
    count = len(found.files)
    await say(f"uploading {count} artifact{'' if count == 1 else 's'}")
    failures: list[str] = []
    limiter = anyio.CapacityLimiter(UPLOAD_CONCURRENCY)

    async def one(local: LocalFile) -> None:
        async with limiter:
            try:
                out = await upload_file(job, local)
            except (ConveyorError, httpx.TransportError, OSError, ValueError) as exc:
                failures.append(f"{local.path}: {_reason(exc)}")
                return
            await say(f"uploaded {out.path} ({_size(out.size)}, sha256 {out.sha256})")

    async with anyio.create_task_group() as tg:
        for local in found.files:
            tg.start_soon(one, local)
    if failures:
        shown = "; ".join(failures[:3]) + ("; …" if len(failures) > 3 else "")
        raise ConveyorError(f"could not upload {len(failures)} of {count} artifacts: {shown}")
    return count


async def upload_file(job: JobClient, local: LocalFile) -> p.ArtifactOut:
    digest, size, content_type = await anyio.to_thread.run_sync(_describe, local.file)
    return await job.upload_artifact(
        local.path,
        lambda: _read(local.file, size),
        size=size,
        sha256=digest,
        content_type=content_type,
    )


def _describe(file: Path) -> tuple[str, int, str]:
    """SHA-256, size and content type of a file (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with file.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    # guess_type reads the system's MIME tables the first time: also blocking.
    content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    return digest.hexdigest(), size, content_type


async def _read(file: Path, size: int) -> AsyncIterator[bytes]:
    """The first `size` bytes of `file` (those that were hashed), in chunks."""
    handle = await anyio.to_thread.run_sync(_open_for_reading, file)
    try:
        left = size
        while left > 0:
            chunk = await anyio.to_thread.run_sync(handle.read, min(CHUNK_SIZE, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(handle.close)


def _open_for_reading(file: Path) -> IO[bytes]:
    return file.open("rb")


def newest_by_path(artifacts: Sequence[p.ArtifactOut]) -> list[p.ArtifactOut]:
    """One artifact per path: the latest uploaded, when several jobs uploaded that path."""
    newest: dict[str, p.ArtifactOut] = {}
    for artifact in artifacts:
        known = newest.get(artifact.path)
        if known is None or (artifact.created_at, artifact.id) > (known.created_at, known.id):
            newest[artifact.path] = artifact
    return sorted(newest.values(), key=lambda a: a.path)


async def download(job: JobClient, artifact: p.ArtifactOut, destination: Path) -> Path:
    """Write the artifact to `destination/<its path>` (replacing a file there), checking its
    size and SHA-256 on the way; a broken download is tried again from the start."""
    problem = path_problem(artifact.path)
    if problem is not None:
        raise ConveyorError(f"refusing to write artifact {artifact.path!r}: its path {problem}")
    target = destination / artifact.path

    async def once() -> Path:
        await _download_once(job, artifact, target)
        return target

    try:
        return await retrying(f"artifact download {artifact.path}", ARTIFACT, once)
    except OSError as exc:
        # Not writable, no space, a file where a directory must go...: one clear line.
        raise ConveyorError(
            f"cannot write artifact {artifact.path!r} to {target}: {exc.strerror or exc}"
        ) from None


async def _download_once(job: JobClient, artifact: p.ArtifactOut, target: Path) -> None:
    handle, temp = await anyio.to_thread.run_sync(_create_temp_beside, target)
    try:
        async with job.artifact_content(artifact.id) as chunks:
            await _receive(chunks, handle, artifact)
        await anyio.to_thread.run_sync(_commit, handle, temp, target)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_discard, handle, temp)
        raise


async def _receive(
    chunks: AsyncIterator[bytes], handle: IO[bytes], artifact: p.ArtifactOut
) -> None:
    """Write `chunks` to `handle`, hashing them; an error unless they are the artifact's bytes."""
    digest = hashlib.sha256()
    received = 0
    buffer = bytearray()
    async for chunk in chunks:
        received += len(chunk)
        if received > artifact.size:
            raise ConveyorError(
                f"artifact {artifact.path!r} is larger than its {artifact.size} bytes"
            )
        buffer += chunk
        if len(buffer) >= CHUNK_SIZE:
            data, buffer = buffer, bytearray()
            await anyio.to_thread.run_sync(_write, handle, digest, data)
    if buffer:
        await anyio.to_thread.run_sync(_write, handle, digest, buffer)
    if received != artifact.size or digest.hexdigest() != artifact.sha256:
        raise ConveyorError(
            f"artifact {artifact.path!r} arrived damaged: {received} bytes with SHA-256 "
            f"{digest.hexdigest()}, expected {artifact.size} bytes with {artifact.sha256}"
        )


def _create_temp_beside(target: Path) -> tuple[IO[bytes], str]:
    # Beside the target, so that the final rename stays on one file system; created with the
    # usual mode (the umask applies), as the file it becomes would be.
    target.parent.mkdir(parents=True, exist_ok=True)
    name = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.part")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb"), name


def _write(handle: IO[bytes], digest: hashlib._Hash, data: bytearray) -> None:
    digest.update(data)
    handle.write(data)


def _commit(handle: IO[bytes], temp: str, target: Path) -> None:
    handle.close()
    Path(temp).replace(target)


def _discard(handle: IO[bytes], temp: str) -> None:
    handle.close()
    Path(temp).unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, APIError | ConveyorError):
        return str(exc)
    if isinstance(exc, httpx.TransportError):
        return f"the server could not be reached ({exc or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"
