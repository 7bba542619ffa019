"""The job executor, as the agent runs it: `python -m conveyor.runner` in a PTY under JobRunner,
with hooks, a repository, plugins and commands made on disk for each test."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from conveyor.protocol import SignalReason
from conveyor.runner.job import JobResult, JobRun, JobRunner
from tests.runner.support import RecordingSink, base_env, kill_quietly, wait_gone

pytestmark = pytest.mark.anyio

EXECUTOR = (sys.executable, "-m", "conveyor.runner")


class Screen:
    """The job's output as `conveyor run` shows it (the tee): no timestamps, CRs dropped."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.changed = anyio.Event()

    async def write(self, data: bytes) -> None:
        self.data += data
        self.changed.set()
        self.changed = anyio.Event()

    def close(self) -> None:
        return None

    @property
    def text(self) -> str:
        return self.data.decode().replace("\r", "")

    async def wait_for(self, text: str) -> None:
        while text not in self.text:
            await self.changed.wait()


def hook(directory: Path, name: str, body: str, *, executable: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    if executable:
        path.chmod(0o755)
    return path


def git(cwd: Path, *args: str) -> str:
    env = {
        **base_env(),
        "HOME": str(cwd),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository with one commit holding `files`; returns the commit's sha."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return git(path, "rev-parse", "HEAD")


def job_env(tmp_path: Path, command: str, **extra: str) -> dict[str, str]:
    return base_env(
        HOME=str(tmp_path),
        CONVEYOR_JOB_ID=f"job-{os.getpid()}-{tmp_path.name}",
        CONVEYOR_COMMAND=command,
        CONVEYOR_BUILD_CHECKOUT_PATH=str(tmp_path / "checkout"),
        CONVEYOR_PLUGINS_PATH=str(tmp_path / "plugins"),
        **extra,
    )


async def run_job(
    tmp_path: Path,
    command: str,
    screen: Screen | None = None,
    *,
    use_pty: bool = True,
    **extra: str,
) -> tuple[JobResult, str]:
    screen = screen or Screen()
    env = job_env(tmp_path, command, **extra)
    run = JobRun(
        command=command, env=env, cwd=tmp_path, argv=EXECUTOR, cancel_grace=5, use_pty=use_pty
    )
    with anyio.fail_after(60):
        result = await JobRunner(run, RecordingSink(), tee=screen).run()
    return result, screen.text


def order(text: str, *marks: str) -> list[int]:
    return [text.index(mark) for mark in marks]


async def test_hooks_run_in_order_around_the_command(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    for phase in ("environment", "pre-checkout", "post-checkout", "pre-command", "post-command"):
        hook(hooks, phase, f"echo HOOK-{phase}\n")
    hook(hooks, "pre-exit", "echo HOOK-pre-exit\n")
    result, text = await run_job(tmp_path, "echo COMMAND", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 0, text
    marks = [
        "HOOK-environment",
        "HOOK-pre-checkout",
        "HOOK-post-checkout",
        "HOOK-pre-command",
        "\nCOMMAND",
        "HOOK-post-command",
        "HOOK-pre-exit",
    ]
    positions = order(text, *marks)
    assert positions == sorted(positions), text


@pytest.mark.parametrize("use_pty", [True, False], ids=["pty", "pipes"])
async def test_the_executor_on_a_pty_or_on_pipes(tmp_path: Path, use_pty: bool) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-command", "echo HOOK\n")
    screen = Screen()
    result, text = await run_job(
        tmp_path,
        'if [ -t 1 ]; then echo "ON A TERMINAL"; else echo "ON A PIPE"; fi',
        screen,
        use_pty=use_pty,
        CONVEYOR_HOOKS_PATH=str(hooks),
    )
    assert result.exit_status == 0, text
    assert "HOOK" in text
    assert ("ON A TERMINAL" if use_pty else "ON A PIPE") in text
    # A terminal turns each line's \n into \r\n; a pipe keeps the bytes as written.
    assert (b"\r\n" in screen.data) == use_pty


async def test_exported_env_and_directory_carry_forward(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hook(hooks, "environment", "export FROM_ENV=one\nexport DROPPED_LATER=x\n")
    hook(hooks, "pre-command", f"export FROM_PRE=two\nunset DROPPED_LATER\ncd {elsewhere}\n")
    result, text = await run_job(
        tmp_path,
        'echo "SEEN $FROM_ENV $FROM_PRE ${DROPPED_LATER-unset} $PWD"',
        CONVEYOR_HOOKS_PATH=str(hooks),
    )
    assert result.exit_status == 0, text
    assert f"SEEN one two unset {elsewhere}" in text


async def test_a_failing_hook_changes_nothing_and_its_status_is_the_jobs(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "environment", "export KEPT=yes\n")
    hook(hooks, "pre-command", "export LOST=yes\ncd /\nfalse\necho not reached\n")
    hook(hooks, "pre-exit", 'echo "AT EXIT ${KEPT-} ${LOST-none} $PWD"\n')
    result, text = await run_job(tmp_path, "echo COMMAND RAN", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 1
    assert "COMMAND RAN" not in text
    assert "not reached" not in text
    assert "pre-command hook" in text and "exited with status 1" in text
    # pre-exit still ran, with the env as it was before the failed hook.
    assert f"AT EXIT yes none {tmp_path / 'checkout'}" in text


async def test_hook_exit_status_is_kept(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-command", "exit 7\n")
    result, _ = await run_job(tmp_path, "true", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 7


async def test_a_hook_ending_with_exit_0_keeps_its_changes(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "environment", "export EARLY=yes\nexit 0\n")
    result, text = await run_job(tmp_path, 'echo "EARLY=$EARLY"', CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 0
    assert "EARLY=yes" in text


async def test_protected_variables_cannot_be_changed_by_hooks(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "environment", "export CONVEYOR_AGENT_ACCESS_TOKEN=stolen-token\nexport OK=1\n")
    result, text = await run_job(
        tmp_path,
        'echo "TOKEN=$CONVEYOR_AGENT_ACCESS_TOKEN OK=$OK"',
        CONVEYOR_HOOKS_PATH=str(hooks),
        CONVEYOR_AGENT_ACCESS_TOKEN="the-real-job-token",
    )
    assert result.exit_status == 0
    assert "may not change $CONVEYOR_AGENT_ACCESS_TOKEN" in text
    assert "stolen-token" not in text
    # The real token is a secret: it is redacted, but the change was refused.
    assert "TOKEN=[REDACTED] OK=1" in text


async def test_a_non_shell_hook_runs_as_a_program_without_changing_env(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(
        hooks,
        "pre-command",
        f"#!{sys.executable}\nimport os\nos.environ['X'] = '1'\n"
        "print('PYTHON HOOK', os.getcwd())\n",
        executable=True,
    )
    result, text = await run_job(tmp_path, 'echo "X=${X-unset}"', CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 0, text
    assert f"PYTHON HOOK {tmp_path / 'checkout'}" in text
    assert "X=unset" in text


async def test_command_hook_replaces_the_command(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "command", 'echo "HOOK INSTEAD OF: $CONVEYOR_COMMAND"\n')
    result, text = await run_job(tmp_path, "echo STEP COMMAND", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 0
    assert "HOOK INSTEAD OF: echo STEP COMMAND" in text
    assert "\nSTEP COMMAND" not in text


async def test_post_command_failure_fails_a_passed_command(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "post-command", "exit 3\n")
    result, _ = await run_job(tmp_path, "true", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 3
    # ... but a failed command keeps its own status.
    result, _ = await run_job(tmp_path, "exit 5", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 5


async def test_checkout_of_a_repository_with_its_hooks(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(
        repo,
        {
            "README": "hello from the repo\n",
            ".conveyor/hooks/pre-command": "export FROM_REPO_HOOK=yes\n",
        },
    )
    command = 'cat README; echo "HOOK=$FROM_REPO_HOOK HEAD=$(git rev-parse HEAD)"; touch junk'
    result, text = await run_job(
        tmp_path, command, CONVEYOR_REPO=f"file://{repo}", CONVEYOR_COMMIT=sha
    )
    assert result.exit_status == 0, text
    assert "hello from the repo" in text
    assert f"HOOK=yes HEAD={sha}" in text
    assert (tmp_path / "checkout" / "junk").exists()
    # A second job in the same directory: fetched, not cloned, and cleaned of the first's files.
    (repo / "README").write_text("second commit\n")
    git(repo, "commit", "-qam", "second")
    result, text = await run_job(
        tmp_path, "cat README; ls", CONVEYOR_REPO=str(repo), CONVEYOR_BRANCH="main"
    )
    assert result.exit_status == 0, text
    assert "second commit" in text
    assert not (tmp_path / "checkout" / "junk").exists()
    assert "git clone" not in text


async def test_local_hooks_can_be_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {".conveyor/hooks/pre-command": "echo SHOULD NOT RUN\n"})
    result, text = await run_job(
        tmp_path, "echo COMMAND", CONVEYOR_REPO=str(repo), CONVEYOR_LOCAL_HOOKS_ENABLED="false"
    )
    assert result.exit_status == 1
    assert "local hooks are off" in text
    assert "SHOULD NOT RUN" not in text and "\nCOMMAND" not in text


async def test_a_checkout_that_fails_is_retried_then_fails_the_job(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo PRE-EXIT RAN\n")
    result, text = await run_job(
        tmp_path,
        "echo COMMAND",
        CONVEYOR_REPO=str(tmp_path / "no-such-repo"),
        CONVEYOR_HOOKS_PATH=str(hooks),
    )
    assert result.exit_status != 0
    assert "attempt 1 of 3" in text and "failed after 3 attempts" in text
    assert "\nCOMMAND" not in text
    assert "PRE-EXIT RAN" in text


def make_plugin(path: Path) -> str:
    """A plugin repository tagged v1, whose hooks show their config; returns its location."""
    make_repo(
        path,
        {
            "hooks/environment": 'echo "PLUGIN ENV MSG=$CONVEYOR_PLUGIN_GREET_MESSAGE"\n'
            "export FROM_PLUGIN=yes\n",
            "hooks/post-command": 'echo "PLUGIN POST ${BUILDKITE_PLUGIN_GREET_NAMES_1}"\n',
        },
    )
    git(path, "tag", "v1")
    (path / "hooks" / "environment").write_text("echo NEWER VERSION\n")
    git(path, "commit", "-qam", "after v1")
    return str(path)


async def test_plugin_from_a_local_git_repository(tmp_path: Path) -> None:
    location = make_plugin(tmp_path / "greet-buildkite-plugin")
    plugins = [{"source": f"{location}#v1", "config": {"message": "hi", "names": ["a", "b"]}}]
    hooks = tmp_path / "hooks"
    hook(hooks, "post-command", "echo AGENT POST\n")
    result, text = await run_job(
        tmp_path,
        'echo "COMMAND SEES $FROM_PLUGIN"',
        CONVEYOR_PLUGINS=json.dumps(plugins),
        CONVEYOR_HOOKS_PATH=str(hooks),
    )
    assert result.exit_status == 0, text
    assert "NEWER VERSION" not in text  # pinned at v1
    assert "PLUGIN ENV MSG=hi" in text
    assert "COMMAND SEES yes" in text
    # post-command hooks run in reverse: the plugin's before the agent's.
    positions = order(text, "PLUGIN POST b", "AGENT POST")
    assert positions == sorted(positions)


async def test_plugin_that_cannot_be_fetched_fails_the_job(tmp_path: Path) -> None:
    plugins = [{"source": f"file://{tmp_path}/missing-plugin#v1"}]
    result, text = await run_job(tmp_path, "echo COMMAND", CONVEYOR_PLUGINS=json.dumps(plugins))
    assert result.exit_status == 1
    assert "git could not clone" in text
    assert "\nCOMMAND" not in text


async def test_plugins_off_or_not_allowed(tmp_path: Path) -> None:
    location = make_plugin(tmp_path / "greet-buildkite-plugin")
    plugins = json.dumps([{"source": location}])
    result, text = await run_job(
        tmp_path, "true", CONVEYOR_PLUGINS=plugins, CONVEYOR_PLUGINS_ENABLED="false"
    )
    assert result.exit_status == 1 and "plugins are off" in text
    result, text = await run_job(
        tmp_path, "true", CONVEYOR_PLUGINS=plugins, CONVEYOR_ALLOWED_PLUGINS="^github.com/acme/"
    )
    assert result.exit_status == 1 and "is not allowed" in text


async def test_bad_plugin_list_is_a_clear_error(tmp_path: Path) -> None:
    result, text = await run_job(tmp_path, "true", CONVEYOR_PLUGINS='{"not": "a list"}')
    assert result.exit_status == 1
    assert "CONVEYOR_PLUGINS is not a list of plugins" in text


async def test_cancel_runs_pre_exit_and_leaves_no_process(tmp_path: Path) -> None:
    """A grandchild that daemonized with a new session and a scrubbed environment (no job id
    to find it by) is still stopped: the executor is its subreaper."""
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", 'echo "PRE-EXIT cancelled=$CONVEYOR_JOB_CANCELLED"\n')
    pidfile = tmp_path / "daemon.pid"
    command = (
        f"(env -i setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &) ; "
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done; echo READY; sleep 300"
    )
    result, text = await cancel_after(
        tmp_path, command, "READY", grace=5, CONVEYOR_HOOKS_PATH=str(hooks)
    )
    daemon = int(pidfile.read_text())
    try:
        assert result.exit_status == -1
        assert result.signal == "SIGTERM"
        assert "PRE-EXIT cancelled=true" in text
        await wait_gone(daemon)
    finally:
        kill_quietly(daemon)


async def test_processes_left_running_are_stopped_at_the_end(tmp_path: Path) -> None:
    pidfile = tmp_path / "left.pid"
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "true\n")  # the executor runs this job
    command = f"(env -i setsid sleep 300 & echo $! > {pidfile}); echo DONE"
    result, text = await run_job(tmp_path, command, CONVEYOR_HOOKS_PATH=str(hooks))
    left = int(pidfile.read_text())
    try:
        assert result.exit_status == 0
        assert "stopping 1 process(es) the job left running" in text
        await wait_gone(left)
    finally:
        kill_quietly(left)


async def test_a_killed_command_reports_128_plus_the_signal(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "true\n")
    result, _ = await run_job(tmp_path, "sh -c 'kill -KILL $$'", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 128 + signal.SIGKILL
    # The command's shell itself killed: the executor reports it the same way.
    result, _ = await run_job(tmp_path, "kill -KILL $$", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 128 + signal.SIGKILL


async def test_checkout_through_a_git_mirror(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"README": "mirrored\n"})
    mirrors = tmp_path / "mirrors"
    result, text = await run_job(
        tmp_path,
        "cat README; cat .git/objects/info/alternates",
        CONVEYOR_REPO=str(repo),
        CONVEYOR_COMMIT=sha,
        CONVEYOR_GIT_MIRRORS_PATH=str(mirrors),
    )
    assert result.exit_status == 0, text
    assert "mirrored" in text
    (mirror,) = [d for d in mirrors.iterdir() if d.is_dir()]
    assert f"{mirror}/objects" in text  # the checkout borrows the mirror's objects
    assert "git clone --mirror" in text


async def test_a_mirror_that_stays_locked_is_exit_status_94(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"README": "x\n"})
    mirrors = tmp_path / "mirrors"
    mirrors.mkdir()
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo PRE-EXIT RAN\n")
    # Another job (this test) is updating the mirror and holds its lock throughout.
    name = str(repo).strip("/").replace("/", "-")
    with (mirrors / f"{name}.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result, text = await run_job(
            tmp_path,
            "echo COMMAND",
            CONVEYOR_REPO=str(repo),
            CONVEYOR_GIT_MIRRORS_PATH=str(mirrors),
            CONVEYOR_GIT_MIRRORS_LOCK_TIMEOUT="0.5",
            CONVEYOR_HOOKS_PATH=str(hooks),
        )
    assert result.exit_status == 94, text
    assert "stayed locked" in text
    assert "\nCOMMAND" not in text and "PRE-EXIT RAN" in text


async def test_an_executor_killed_from_outside_is_255(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "true\n")
    # The command's parent is the executor.
    result, _ = await run_job(tmp_path, "kill -KILL $PPID", CONVEYOR_HOOKS_PATH=str(hooks))
    assert (result.exit_status, result.signal, result.signal_reason) == (255, None, None)


async def test_pre_exit_runs_within_the_grace_when_the_command_ignores_the_signal(
    tmp_path: Path,
) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", 'echo "PRE-EXIT RAN"\n')
    command = "trap '' TERM; echo READY; sleep 300; sleep 300"
    result, text = await cancel_after(
        tmp_path, command, "READY", grace=4, CONVEYOR_HOOKS_PATH=str(hooks)
    )
    assert result.exit_status == -1
    assert "did not stop in time: killing its processes" in text
    assert "PRE-EXIT RAN" in text


async def cancel_after(
    tmp_path: Path,
    command: str,
    ready: str,
    *,
    grace: float = 4,
    cancel_signal: str = "SIGTERM",
    **extra: str,
) -> tuple[JobResult, str]:
    """Run `command` under the executor; cancel it once `ready` is shown."""
    screen = Screen()
    env = job_env(tmp_path, command, CONVEYOR_CANCEL_GRACE_PERIOD=str(grace), **extra)
    run = JobRun(
        command=command, env=env, cwd=tmp_path, argv=EXECUTOR, cancel_grace=grace,
        cancel_signal=signal.Signals[cancel_signal],
    )  # fmt: skip
    runner = JobRunner(run, RecordingSink(), tee=screen)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def cancel_when_ready() -> None:
                await screen.wait_for(ready)
                runner.cancel(SignalReason.CANCEL)

            tg.start_soon(cancel_when_ready)
            result = await runner.run()
    return result, screen.text


@pytest.mark.parametrize("cancel_signal", ["SIGUSR1", "SIGQUIT", "SIGINT"])
async def test_any_catchable_cancel_signal_still_runs_pre_exit(
    tmp_path: Path, cancel_signal: str
) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo PRE-EXIT RAN\n")
    result, text = await cancel_after(
        tmp_path, "echo READY; sleep 300", "READY",
        cancel_signal=cancel_signal, CONVEYOR_HOOKS_PATH=str(hooks),
    )  # fmt: skip
    assert (result.exit_status, result.signal) == (-1, cancel_signal)
    assert "PRE-EXIT RAN" in text


async def test_a_cancel_stops_a_checkout_between_attempts(tmp_path: Path) -> None:
    """A git that hangs (as over a dead network): the cancel ends the checkout, with no
    second attempt, and pre-exit runs."""
    fake_bin = tmp_path / "bin"
    hook(fake_bin, "git", "#!/bin/sh\necho GIT-CALLED\nexec sleep 300\n", executable=True)
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo PRE-EXIT RAN\n")
    path = f"{fake_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result, text = await cancel_after(
        tmp_path, "true", "GIT-CALLED", CONVEYOR_REPO="https://example.invalid/repo.git",
        CONVEYOR_HOOKS_PATH=str(hooks), PATH=path,
    )  # fmt: skip
    assert result.exit_status == -1
    assert text.count("GIT-CALLED") == 1
    assert "attempt 2" not in text
    assert "PRE-EXIT RAN" in text


async def test_a_daemon_started_during_the_grace_does_not_survive(tmp_path: Path) -> None:
    pidfile = tmp_path / "late.pid"
    hooks = tmp_path / "hooks"
    # pre-exit (which runs in the grace) starts a daemon that leaves everything behind, then
    # hangs until the agent's SIGKILL.
    hook(
        hooks,
        "pre-exit",
        f"(env -i setsid sh -c 'echo $$ > {pidfile}; exec sleep 300' &)\n"
        f"while [ ! -s {pidfile} ]; do sleep 0.01; done\nsleep 300\n",
    )
    result, _ = await cancel_after(
        tmp_path, "echo READY; sleep 300", "READY", grace=2, CONVEYOR_HOOKS_PATH=str(hooks)
    )
    daemon = int(pidfile.read_text())
    try:
        assert result.exit_status == -1
        await wait_gone(daemon)
    finally:
        kill_quietly(daemon)


async def test_a_hook_with_its_own_exit_trap(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "environment", "trap 'echo CLEANUP' EXIT\nexport FROM_TRAPPY=yes\n")
    result, text = await run_job(
        tmp_path, 'echo "SEEN $FROM_TRAPPY"', CONVEYOR_HOOKS_PATH=str(hooks)
    )
    assert result.exit_status == 0, text
    assert "CLEANUP" in text and "SEEN yes" in text


async def test_a_compiled_hook_runs_as_a_program(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    true = Path("/bin/true") if Path("/bin/true").exists() else Path("/usr/bin/true")
    (hooks / "pre-command").write_bytes(true.read_bytes())
    (hooks / "pre-command").chmod(0o755)
    result, text = await run_job(tmp_path, "echo COMMAND", CONVEYOR_HOOKS_PATH=str(hooks))
    assert result.exit_status == 0, text
    assert "COMMAND" in text


async def test_local_hooks_off_still_runs_the_agents_pre_exit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {".conveyor/hooks/pre-command": "echo REPO HOOK\n"})
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo AGENT PRE-EXIT\n")
    result, text = await run_job(
        tmp_path, "true", CONVEYOR_REPO=str(repo), CONVEYOR_LOCAL_HOOKS_ENABLED="false",
        CONVEYOR_HOOKS_PATH=str(hooks),
    )  # fmt: skip
    assert result.exit_status == 1
    assert text.count("local hooks are off") == 1
    assert "AGENT PRE-EXIT" in text and "REPO HOOK" not in text


async def test_a_repository_hook_linking_outside_the_checkout_is_not_run(tmp_path: Path) -> None:
    outside = tmp_path / "outside.sh"
    outside.write_text("echo OUTSIDE RAN\n")
    repo = tmp_path / "repo"
    make_repo(repo, {"README": "x\n"})
    (repo / ".conveyor" / "hooks").mkdir(parents=True)
    (repo / ".conveyor" / "hooks" / "pre-command").symlink_to(outside)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "link")
    result, text = await run_job(tmp_path, "echo COMMAND", CONVEYOR_REPO=str(repo))
    assert result.exit_status == 0, text
    assert "OUTSIDE RAN" not in text and "COMMAND" in text


async def test_a_missing_shell_is_one_line_and_pre_exit_runs(tmp_path: Path) -> None:
    hooks = tmp_path / "hooks"
    hook(hooks, "pre-exit", "echo PRE-EXIT RAN\n")
    result, text = await run_job(
        tmp_path, "true", CONVEYOR_SHELL="/no/such/shell -c", CONVEYOR_HOOKS_PATH=str(hooks)
    )
    assert result.exit_status == 1
    assert "conveyor: error: No such file or directory" in text
    assert "Traceback" not in text


async def test_a_vendored_plugin_in_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(
        repo,
        {
            "tools/greet/hooks/environment": 'export GREETING="$CONVEYOR_PLUGIN_GREET_WORD"\n',
            "tools/greet/hooks/post-command": 'echo "VENDORED POST $GREETING"\n',
        },
    )
    plugins = [{"source": "./tools/greet", "config": {"word": "hej"}}]
    result, text = await run_job(
        tmp_path, 'echo "COMMAND $GREETING"', CONVEYOR_REPO=str(repo),
        CONVEYOR_PLUGINS=json.dumps(plugins),
    )  # fmt: skip
    assert result.exit_status == 0, text
    assert "COMMAND hej" in text and "VENDORED POST hej" in text


async def test_credentials_in_a_repository_url_stay_out_of_the_log(tmp_path: Path) -> None:
    url = "https://ci-user:s3cr3t-t0ken@127.0.0.1:9/app.git"
    result, text = await run_job(
        tmp_path, "true", CONVEYOR_REPO=url, CONVEYOR_GIT_MIRRORS_PATH=str(tmp_path / "m")
    )
    assert result.exit_status != 0
    assert "s3cr3t-t0ken" not in text and "ci-user" not in text
    assert "https://127.0.0.1:9/app.git" in text
    assert not any("t0ken" in p.name for p in (tmp_path / "m").iterdir())
