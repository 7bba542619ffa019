"""The relay of a busy PTY (`cat` into a wide pipe): taken only past RELAY_AFTER, loses and
reorders nothing, and never outlives the run; pipe mode's pipe is widened."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from conveyor.runner import relay
from conveyor.runner.process import run_process
from conveyor.runner.relay import PIPE_SIZE, RELAY_AFTER, Relay
from tests.runner.support import Output, base_env, kill_quietly, process_gone

pytestmark = pytest.mark.anyio

LINES = 200_000  # `seq` prints ~1.3 MB: well past RELAY_AFTER


def expected_seq(count: int, *, pty: bool = True) -> bytes:
    out = "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    return out.replace(b"\n", b"\r\n") if pty else out


@pytest.fixture
def relays(monkeypatch: pytest.MonkeyPatch) -> list[Relay | None]:
    """Every relay the runs start (None: one that could not start), by watching
    `Relay.start`, which still does its work."""
    started: list[Relay | None] = []
    original = Relay.start

    def watch(master: int) -> Relay | None:
        made = original(master)
        started.append(made)
        return made

    monkeypatch.setattr(Relay, "start", staticmethod(watch))
    return started


async def _cats_of_ours() -> list[int]:
    """Our own children that are `cat`, zombies included."""
    me = str(os.getpid())
    found = []
    async for entry in anyio.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = await (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat.rsplit(")", 1)
        if comm.endswith("(cat") and rest.split()[1] == me:
            found.append(int(entry.name))
    return found


async def test_busy_terminal_is_relayed_complete_and_in_order(
    tmp_path: Path, relays: list[Relay | None]
) -> None:
    output = Output()
    with anyio.fail_after(30):
        result = await run_process(
            ["seq", "1", str(LINES)], env=base_env(), cwd=tmp_path, on_output=output
        )
    assert result.status == 0
    expected = expected_seq(LINES)
    assert len(expected) > 4 * RELAY_AFTER
    assert len(relays) == 1 and relays[0] is not None
    assert hashlib.sha256(output.data).hexdigest() == hashlib.sha256(expected).hexdigest()
    # Collected: neither running nor a zombie.
    assert await _cats_of_ours() == []
    assert await process_gone(relays[0].pid)


async def test_quiet_terminal_is_read_directly(tmp_path: Path, relays: list[Relay | None]) -> None:
    output = Output()
    with anyio.fail_after(30):
        await run_process(["seq", "1", "1000"], env=base_env(), cwd=tmp_path, on_output=output)
    assert relays == []
    assert bytes(output.data) == expected_seq(1000)


async def test_without_cat_the_terminal_is_read_directly_to_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relays: list[Relay | None]
) -> None:
    monkeypatch.setattr(relay, "_CAT", None)
    output = Output()
    with anyio.fail_after(30):
        await run_process(["seq", "1", str(LINES)], env=base_env(), cwd=tmp_path, on_output=output)
    assert relays == [None]
    assert bytes(output.data) == expected_seq(LINES)


LEFTOVER = """
import signal, subprocess, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)
for i in range(20000):
    print(f"{i:099d}")
sys.stdout.flush()
child = subprocess.Popen(["sleep", "20"])
with open(sys.argv[1], "w") as f:
    f.write(str(child.pid))
print("done", flush=True)
"""


async def test_leftover_holding_a_relayed_terminal_does_not_hold_the_run(
    tmp_path: Path, relays: list[Relay | None]
) -> None:
    pidfile = tmp_path / "leftover.pid"
    output = Output()
    try:
        with anyio.move_on_after(10) as hung:
            result = await run_process(
                [sys.executable, "-c", LEFTOVER, str(pidfile)],
                env=base_env(),
                cwd=tmp_path,
                on_output=output,
            )
        assert not hung.cancelled_caught, "run_process waited for the leftover process"
        assert result.status == 0
        assert len(relays) == 1 and relays[0] is not None
        assert output.data.endswith(b"done\r\n")
        assert output.data.count(b"\r\n") == 20_001
        assert not await process_gone(int(await anyio.Path(pidfile).read_text()))
        # The relay, still waiting on the held terminal, was stopped and collected.
        assert await _cats_of_ours() == []
    finally:
        if await anyio.Path(pidfile).exists():
            kill_quietly(int(await anyio.Path(pidfile).read_text()))


async def test_cancelled_busy_job_leaves_no_relay(
    tmp_path: Path, relays: list[Relay | None]
) -> None:
    output = Output()
    with anyio.move_on_after(1.5):
        await run_process(
            ["bash", "-c", "echo $$; exec yes"],
            env=base_env(),
            cwd=tmp_path,
            on_output=output,
            cancel_grace=2,
        )
    assert len(relays) == 1 and relays[0] is not None
    assert await process_gone(int(output.data.split()[0]))
    assert await _cats_of_ours() == []
    # What was read is whole lines of `yes`, in order, up to where it was stopped.
    lines = bytes(output.data).split(b"\r\n")[1:-1]  # after the pid, before a cut line
    assert len(lines) > RELAY_AFTER // 3
    assert set(lines) == {b"y"}


@pytest.mark.parametrize("busy", [False, True])
async def test_pipe_mode_widens_a_busy_pipe_only(tmp_path: Path, busy: bool) -> None:
    output = Output()
    # Prints its pipe's size, then (busy) 400 KB and its size again once the agent has read
    # past RELAY_AFTER (up to 10 s).
    script = (
        "import fcntl, sys, time\n"
        "size = lambda: fcntl.fcntl(1, 1032)\n"  # F_GETPIPE_SZ
        "print(size(), flush=True)\n"
        f"if {busy}:\n"
        "    sys.stdout.write(('x' * 99 + '\\n') * 4000); sys.stdout.flush()\n"
        "    for _ in range(200):\n"
        "        if size() > 65536: break\n"
        "        time.sleep(0.05)\n"
        "    print(size(), flush=True)\n"
    )
    await run_process(
        [sys.executable, "-c", script], env=base_env(), cwd=tmp_path, on_output=output,
        use_pty=False,
    )  # fmt: skip
    sizes = [int(line) for line in bytes(output.data).split(b"\n") if line.isdigit()]
    assert sizes[0] == 65536  # a quiet job keeps the system's default
    if busy:
        ceiling = int(await anyio.Path("/proc/sys/fs/pipe-max-size").read_text())
        widened = PIPE_SIZE if os.geteuid() == 0 or ceiling >= PIPE_SIZE else 65536
        assert sizes == [65536, widened]
        assert bytes(output.data).count(b"x" * 99 + b"\n") == 4000
    else:
        assert sizes == [65536]


async def test_relay_killed_mid_run_loses_nothing_and_the_job_ends(
    tmp_path: Path, relays: list[Relay | None]
) -> None:
    """A Ctrl-C for the agent, or anything else, that kills `cat`: the agent reads the
    terminal itself again, to its end."""
    output = Output()
    count = 2_000_000  # ~15 MB: still running when the relay is killed

    async def kill_relay_once_started() -> None:
        while not relays:
            await anyio.sleep(0.01)
        made = relays[0]
        assert made is not None
        os.kill(made.pid, signal.SIGINT)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_relay_once_started)
            result = await run_process(
                ["seq", "1", str(count)], env=base_env(), cwd=tmp_path, on_output=output
            )
    assert result.status == 0
    data = bytes(output.data)
    # Whatever `cat` held when it died (at most one read of it) is the only possible gap.
    expected = expected_seq(count)
    assert data[-100:] == expected[-100:]
    assert len(expected) - len(data) <= 128 * 1024
    assert await _cats_of_ours() == []


async def test_a_relay_that_cannot_start_leaves_the_terminal_to_the_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relays: list[Relay | None]
) -> None:
    monkeypatch.setattr(relay, "_CAT", str(tmp_path / "no-such-cat"))
    output = Output()
    with anyio.fail_after(30):
        await run_process(["seq", "1", str(LINES)], env=base_env(), cwd=tmp_path, on_output=output)
    assert relays == [None]
    assert bytes(output.data) == expected_seq(LINES)


async def test_output_a_late_relay_still_holds_is_not_cut_off(
    tmp_path: Path, relays: list[Relay | None]
) -> None:
    """The command has exited and the pipe is quiet, but the terminal still holds output the
    relay has not taken (here: the relay is stopped for a while): reading goes on."""
    output = Output()

    async def stop_the_relay_for_a_while() -> None:
        while not relays or b"50000\r\n" not in output.data:  # all of `seq` relayed
            await anyio.sleep(0.01)
        made = relays[0]
        assert made is not None
        os.kill(made.pid, signal.SIGSTOP)
        try:
            await anyio.sleep(3)  # the command writes LAST 2 s after `seq` and exits
        finally:
            os.kill(made.pid, signal.SIGCONT)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_the_relay_for_a_while)
            result = await run_process(
                ["bash", "-c", "seq 1 50000; sleep 2; echo LAST"],
                env=base_env(),
                cwd=tmp_path,
                on_output=output,
            )
    assert result.status == 0
    assert bytes(output.data) == expected_seq(50000) + b"LAST\r\n"
    assert await _cats_of_ours() == []
