"""A job printing 50 MB: the server holds every byte, in order, exactly once."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from conveyor import protocol as p
from tests.harness import Api, running_agents, running_server

pytestmark = pytest.mark.anyio

LINE = b"%08d " + b"x" * 90 + b"\n"  # 100 bytes with the newline
LINES = 500_000  # 50 MB

GENERATOR = f"""python3 -c '
import sys
out = sys.stdout.buffer
for i in range({LINES}):
    out.write(b"%08d " % i + b"x" * 90 + b"\\n")
'"""


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


def expected_log() -> bytes:
    # The PTY turns every \n into \r\n.
    return b"".join((b"%08d " % i) + b"x" * 90 + b"\r\n" for i in range(LINES))


@pytest.mark.timeout(300)
async def test_fifty_megabytes(database_url: str, tmp_path: Path) -> None:
    async with (
        running_server(database_url, tmp_path / "srv") as server,
        running_agents(server, tmp_path / "builds", spawn=1),
        Api(server) as api,
    ):
        build = await api.wait_build(
            await api.create_build(
                f"steps:\n  - label: big\n    command: |\n{_indent(GENERATOR)}\n"
            ),
            timeout=240,
        )
        job = build.jobs[0]
        assert (job.state, job.exit_status, job.chunks_failed_count) == (
            p.JobState.FINISHED, 0, 0,
        )  # fmt: skip
        response = await api.http.get(f"/api/v1/jobs/{job.id}/log")
        async with server.ctx.store.transaction() as tx:
            index = await tx.chunk_index(job.id)
    log = response.content
    expected = expected_log()
    assert len(log) == len(expected) == 50_500_000
    assert hashlib.sha256(log).digest() == hashlib.sha256(expected).digest()
    assert response.headers["x-conveyor-log-gaps"] == "0"
    # Stored once: the chunks tile the log with no overlap and no hole.
    offsets = [o for o, _ in index]
    assert offsets == sorted(set(offsets))
    # Sizes count the stored bytes: the output and a timestamp marker per line.
    stored = int(response.headers["x-conveyor-log-size"])
    assert stored > len(expected)
    assert sum(size for _, size in index) == stored
    assert all(o == prev_o + prev_s for (prev_o, prev_s), (o, _) in itertools.pairwise(index))
    assert job.log_size == stored
