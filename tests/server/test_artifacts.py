"""Artifacts through a real server: jobs upload with their own token, search and download their
build's artifacts; the REST API lists and serves them. The content lives in the server's
content-addressed store, checked against the SHA-256 the uploader announced.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from conveyor import artifacts
from conveyor import protocol as p
from conveyor.artifact_paths import compile_glob, path_problem, split_globs
from conveyor.client import JobClient
from conveyor.errors import APIError, ConveyorError, JobGoneError
from conveyor.server.service import ServerHandle
from tests.harness import running_server
from tests.server.drive import Driver, cmd, finish, steps

pytestmark = pytest.mark.anyio

LIMIT = 3 * 1024 * 1024


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerHandle]:
    """The server of this module keeps artifacts of at most `LIMIT` bytes."""
    async with running_server(
        database_url, tmp_path / "srv", chunk_max_size=4096, artifact_max_size=LIMIT
    ) as handle:
        yield handle


def content(data: bytes, piece: int = 64 * 1024) -> Callable[[], AsyncIterator[bytes]]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            yield data[start : start + piece]

    return chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def put(job: JobClient, path: str, data: bytes) -> p.ArtifactOut:
    return await job.upload_artifact(path, content(data), size=len(data), sha256=sha(data))


async def fetch(job: JobClient, artifact: p.ArtifactOut) -> bytes:
    received = bytearray()
    async with job.artifact_content(artifact.id) as chunks:
        async for chunk in chunks:
            received += chunk
    return bytes(received)


def blobs(tmp_path: Path) -> list[str]:
    """The content addresses in the server's artifact store (and no stray temporary file)."""
    root = tmp_path / "srv" / "artifacts"
    strays = list((root / "tmp").iterdir()) if (root / "tmp").exists() else []
    assert strays == []
    return sorted(f.parent.name + f.name for f in (root / "sha256").glob("*/*"))


async def raw_put(
    http: httpx.AsyncClient, spec: p.JobSpec, body: bytes, **params: object
) -> httpx.Response:
    query = {"path": "x.bin", "size": len(body), "sha256": sha(body), **params}
    return await http.put(
        f"/agent/v1/jobs/{spec.id}/artifacts",
        params=query,  # type: ignore[arg-type]
        content=body,
        headers={"Authorization": f"Token {spec.token}"},
    )


async def test_upload_search_and_download_round_trip(
    driver: Driver, server: ServerHandle, tmp_path: Path
) -> None:
    build = await driver.create(steps(cmd("make", "key: make"), "- wait", cmd("use")))
    _, maker = await driver.take("make")
    big = os.urandom(LIMIT - 1000)  # several of the store's write chunks
    small = b"hello artifacts\n"
    first = await put(maker, "dist/app.bin", big)
    second = await put(maker, "reports/unit/results.xml", small)
    assert (first.path, first.size, first.sha256, first.step_key) == (
        "dist/app.bin", len(big), sha(big), "make",
    )  # fmt: skip
    assert first.build_id == build.id and first.job_id == maker.job_id
    # Stored once each, under their content's address.
    assert blobs(tmp_path) == sorted([sha(big), sha(small)])
    await finish(maker)

    _, user = await driver.take("use")
    found = await user.search_artifacts()
    assert [a.path for a in found] == ["dist/app.bin", "reports/unit/results.xml"]
    assert [a.path for a in await user.search_artifacts("**/*.xml")] == [second.path]
    assert [a.path for a in await user.search_artifacts("dist/*")] == [first.path]
    assert await user.search_artifacts("*.xml") == []  # `*` stays within one directory
    assert len(await user.search_artifacts(step="make")) == 2
    assert await user.search_artifacts(step="use") == []
    assert len(await user.search_artifacts(build=build.id)) == 2
    assert await fetch(user, first) == big
    assert await fetch(user, second) == small

    # The REST API lists the build's artifacts and serves them.
    rest = driver.api.http
    r = await rest.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
    assert r.status_code == 200, r.text
    assert [a["path"] for a in r.json()] == ["dist/app.bin", "reports/unit/results.xml"]
    r = await rest.get(
        f"/api/v1/pipelines/test/builds/{build.number}/artifacts", params={"query": "dist/**"}
    )
    assert [a["id"] for a in r.json()] == [first.id]
    r = await rest.get(f"/api/v1/artifacts/{first.id}")
    assert p.ArtifactOut.model_validate(r.json()) == first
    r = await rest.get(f"/api/v1/artifacts/{first.id}/download")
    assert r.status_code == 200
    assert r.content == big
    assert r.headers[p.ARTIFACT_SHA256_HEADER] == sha(big)
    assert r.headers["content-length"] == str(len(big))
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''app.bin"
    # An API token is needed.
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        r = await anonymous.get(f"/api/v1/artifacts/{first.id}/download")
    assert r.status_code == 401
    r = await rest.get("/api/v1/artifacts/nope/download")
    assert r.status_code == 404


async def test_the_job_side_uploads_globs_and_downloads_with_checks(
    driver: Driver, tmp_path: Path
) -> None:
    await driver.create(steps(cmd("make"), "- wait", cmd("use")))
    _, maker = await driver.take("make")
    work = tmp_path / "work"
    for name, data in {
        "dist/app.tar.gz": b"tarball",
        "dist/nested/deep/lib.so": b"library",
        "dist/.hidden": b"dotfile",
        "logs/run.log": b"log line",
        "notes.txt": b"not matched",
    }.items():
        await anyio.Path(work / name).parent.mkdir(parents=True, exist_ok=True)
        await anyio.Path(work / name).write_bytes(data)
    said: list[str] = []

    async def say(line: str) -> None:
        said.append(line)

    globs = split_globs(["dist/**;logs/*.log", "missing/*.txt", "dist/**"])
    assert globs == ["dist/**", "logs/*.log", "missing/*.txt"]
    assert await artifacts.upload(maker, work, globs, say) == 4
    assert "warning: no files match 'missing/*.txt'" in said
    assert sum(line.startswith("uploaded ") for line in said) == 4
    await finish(maker)

    _, user = await driver.take("use")
    found = await user.search_artifacts()
    assert [a.path for a in found] == [
        "dist/.hidden", "dist/app.tar.gz", "dist/nested/deep/lib.so", "logs/run.log",
    ]  # fmt: skip
    out = tmp_path / "out"
    for artifact in found:
        written = await artifacts.download(user, artifact, out)
        assert written == out / artifact.path
    assert await anyio.Path(out / "dist/nested/deep/lib.so").read_bytes() == b"library"
    assert await anyio.Path(out / "logs/run.log").read_bytes() == b"log line"
    # Nothing but the downloaded files is left behind.
    assert sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file()) == sorted(
        a.path for a in found
    )

    # A download whose bytes are not what the server recorded is refused, and leaves nothing.
    damaged = found[1].model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ConveyorError, match="arrived damaged"):
        await artifacts.download(user, damaged, tmp_path / "damaged")
    assert not [f for f in (tmp_path / "damaged").rglob("*") if f.is_file()]


async def test_a_job_reads_only_its_own_builds_artifacts(
    driver: Driver, server: ServerHandle
) -> None:
    await driver.create(steps(cmd("one")))
    _, one = await driver.take("one")
    theirs = await put(one, "secret.txt", b"build one only")
    other = Driver(server, driver.http, driver.api)
    other_build = await other.create(steps(cmd("two")))
    spec_two, two = await other.take("two")
    assert other_build.id != theirs.build_id

    assert await two.search_artifacts() == []
    with pytest.raises(APIError) as caught:
        await two.search_artifacts(build=theirs.build_id)
    assert caught.value.status == 403
    assert "a job reads only the artifacts of its own build" in str(caught.value)
    with pytest.raises(APIError) as caught:
        await fetch(two, theirs)
    assert caught.value.status == 403
    assert "belongs to another build" in str(caught.value)
    # An artifact that does not exist is a plain 404, not the job's end.
    with pytest.raises(APIError) as caught:
        await fetch(two, theirs.model_copy(update={"id": "nope"}))
    assert caught.value.status == 404 and not isinstance(caught.value, JobGoneError)
    # One job's token does not work for another job.
    with pytest.raises(JobGoneError) as caught:
        await JobClient(driver.http, spec_two.token, one.job_id).search_artifacts()
    assert caught.value.status == 401


async def test_a_finished_jobs_token_is_refused(driver: Driver) -> None:
    build = await driver.create(steps(cmd("done")))
    _, job = await driver.take("done")
    await put(job, "before.txt", b"uploaded while running")
    await finish(job)
    with pytest.raises(JobGoneError) as caught:
        await put(job, "after.txt", b"too late")
    assert caught.value.status == 401
    with pytest.raises(JobGoneError) as caught:
        await job.search_artifacts()
    assert caught.value.status == 401
    r = await driver.api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
    assert [a["path"] for a in r.json()] == ["before.txt"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../outside.txt", "goes up (`..`)"),
        ("dist/../../etc/passwd", "goes up (`..`)"),
        ("/etc/passwd", "is absolute"),
        ("dist//app.bin", "is not normalized"),
        ("./app.bin", "is not normalized"),
        ("line\nbreak", "contains control characters"),
        ("", "is empty"),
    ],
)
async def test_paths_outside_the_upload_root_are_refused(
    driver: Driver, http: httpx.AsyncClient, server: ServerHandle, tmp_path: Path, path: str,
    problem: str,
) -> None:  # fmt: skip
    build = await driver.create(steps(cmd("job")))
    spec, _ = await driver.take("job")
    r = await raw_put(http, spec, b"data", path=path)
    assert r.status_code == 422, r.text
    assert r.json()["message"] == f"artifact path {path!r} {path_problem(path)}"
    assert problem in r.json()["message"]
    assert blobs(tmp_path) == []
    r = await driver.api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
    assert r.json() == []


async def test_the_job_side_refuses_globs_outside_the_current_directory(tmp_path: Path) -> None:
    for glob, problem in [
        ("../x/*", "goes up"),
        ("/etc/*", "is absolute"),
        ("a/../../b", "goes up"),
    ]:
        with pytest.raises(ConveyorError, match=problem):
            await anyio.to_thread.run_sync(artifacts.find_files, tmp_path, [glob])
    # A link out of the directory is uploaded by its own (inside) path, as a file.
    await anyio.Path(tmp_path / "inside").mkdir()
    await anyio.Path(tmp_path / "outside.txt").write_text("x")
    await anyio.Path(tmp_path / "inside/link.txt").symlink_to(tmp_path / "outside.txt")
    found = await anyio.to_thread.run_sync(artifacts.find_files, tmp_path / "inside", ["**"])
    assert [f.path for f in found.files] == ["link.txt"]


async def test_oversized_and_mismatched_uploads_store_nothing(
    driver: Driver, http: httpx.AsyncClient, server: ServerHandle, tmp_path: Path
) -> None:
    build = await driver.create(steps(cmd("job")))
    spec, job = await driver.take("job")
    # Announced over the limit: refused before the body is read.
    too_big = os.urandom(LIMIT + 1)
    with pytest.raises(APIError) as caught:
        await put(job, "huge.bin", too_big)
    assert caught.value.status == 413
    assert f"artifact 'huge.bin' is {LIMIT + 1} bytes, over this server's limit of {LIMIT}" in (
        str(caught.value)
    )
    # A body longer than announced, shorter, or with another SHA-256.
    r = await raw_put(http, spec, b"0123456789", size=5)
    assert r.status_code == 400 and "larger than the 5 bytes announced" in r.json()["message"]
    r = await raw_put(http, spec, b"0123456789", size=20)
    assert r.status_code == 400 and "10 bytes arrived, but 20 were announced" in r.text
    r = await raw_put(http, spec, b"0123456789", sha256=sha(b"something else"))
    assert r.status_code == 400 and f"but {sha(b'something else')} was announced" in r.text
    r = await raw_put(http, spec, b"0123456789", sha256="not-hex")
    assert r.status_code == 422
    assert blobs(tmp_path) == []
    r = await driver.api.http.get(f"/api/v1/pipelines/test/builds/{build.number}/artifacts")
    assert r.json() == []


async def test_uploading_a_path_again_replaces_it(driver: Driver, server: ServerHandle) -> None:
    await driver.create(steps(cmd("job")))
    _, job = await driver.take("job")
    first = await put(job, "out/result.txt", b"first try")
    again = await put(job, "out/result.txt", b"first try")
    assert again.id == first.id and again.sha256 == first.sha256
    changed = await put(job, "out/result.txt", b"second try")
    assert changed.id == first.id and changed.sha256 == sha(b"second try")
    [only] = await job.search_artifacts()
    assert only == changed
    assert await fetch(job, only) == b"second try"


def test_globs() -> None:
    def matches(glob: str, path: str) -> bool:
        return compile_glob(glob).fullmatch(path) is not None

    assert matches("*.txt", "a.txt") and not matches("*.txt", "d/a.txt")
    assert matches("**/*.txt", "a.txt") and matches("**/*.txt", "d/e/a.txt")
    assert matches("d/**", "d/a") and matches("d/**", "d/e/f") and not matches("d/**", "d")
    assert matches("d/**/x", "d/x") and matches("d/**/x", "d/a/b/x")
    assert matches("./d//a?.[ch]", "d/ab.c") and not matches("d/a?.[ch]", "d/ab.o")
    assert matches("[!a]*", "b") and not matches("[!a]*", "a") and not matches("?", "/")
    assert matches("a**b", "axxb") and not matches("a**b", "a/b")
    assert matches("[[]x]", "[x]") and matches("a+(b)", "a+(b)")
    for bad in ("../x", "/x", ".", ""):
        with pytest.raises(ValueError, match=r"absolute|goes up|names no file"):
            compile_glob(bad)
