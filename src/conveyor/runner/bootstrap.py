"""The job executor (`conveyor bootstrap`): the process the agent starts for each job, in the
job's terminal and session. It runs the job's phases, each a hook or built-in work:

    environment → plugins fetched → pre-checkout → checkout → post-checkout → pre-command →
    command → post-command → pre-artifact → artifact upload → post-artifact → pre-exit

Hooks come from the agent's hooks directories, the repository (once checked out) and the
plugins; see `hooks`. `post-*` and `pre-exit` hooks run in the reverse order (plugins, then
repository, then agent), as the matching `pre-*` hooks' cleanup. A failure before the command
skips to `pre-exit`, which always runs, also after a cancel (a signal to the process group,
which the running child gets too).

What to run comes from the environment the agent gives (`Settings.from_env`), so the executor
needs no server to start. It is a child subreaper: a process the job starts that double-forks
away from its parent is re-parented here, not to init, so at the end — and on a cancel, when the
agent kills this process's descendants — every process the job started is found and stopped.

Exit status: the command's, else the first failing hook's or built-in step's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from conveyor import jobsocket
from conveyor.errors import ConveyorError, JobSetupError
from conveyor.runner import checkout, hooks, plugins
from conveyor.runner.children import run_child
from conveyor.runner.hooks import Hook
from conveyor.runner.plugins import PluginRef
from conveyor.runner.settings import Settings
from conveyor.runner.subreaper import become_subreaper, kill_descendants, stop_leftovers

# Any of these cancels the job: whichever `--cancel-signal` the agent sends (SIGKILL aside,
# which nothing can catch) reaches the executor with the rest of the job's process group.
CANCEL_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


class JobApiLink:
    """The executor's side of the job API (`conveyor env`): it gives the agent the env before
    each hook or command, and takes back what the job changed through the API after it."""

    def __init__(self, env: Mapping[str, str]):
        self._socket = env.get(jobsocket.SOCKET_ENV, "")
        self._token = env.get(jobsocket.TOKEN_ENV, "")
        self._pushed: dict[str, str] = {}

    async def _call(self, message: dict[str, object]) -> object:
        if not (self._socket and self._token):
            return None
        try:
            return await jobsocket.request(self._socket, {"token": self._token, **message})
        except ConveyorError as exc:
            await note(f"warning: the job API is not available: {exc}")
            self._socket = ""
            return None

    async def push(self, env: Mapping[str, str]) -> None:
        self._pushed = dict(env)
        await self._call({"op": "env.sync", "env": self._pushed})

    async def changes(self) -> dict[str, str | None]:
        """What `conveyor env set/unset` changed since the last push (None: unset)."""
        current = await self._call({"op": "env.get"})
        if not isinstance(current, dict):
            return {}
        changed: dict[str, str | None] = {
            k: str(v) for k, v in current.items() if self._pushed.get(k) != v
        }
        changed.update({k: None for k in self._pushed if k not in current})
        return changed


def apply_changes(env: dict[str, str], changes: Mapping[str, str | None]) -> None:
    for name, value in changes.items():
        if name in hooks.PROTECTED:
            continue
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value


async def say(text: str) -> None:
    """A line of the executor's own in the job's log."""
    # The terminal is the agent's to read, which it always does: a short write does not wait.
    os.write(sys.stdout.fileno(), f"{text}\n".encode())


async def note(text: str) -> None:
    await say(f"conveyor: {text}")


class Executor:
    def __init__(self, settings: Settings, env: Mapping[str, str]):
        self.settings = settings
        self.env = dict(env)
        self.cwd = settings.checkout_path
        self.plugin_dirs: list[tuple[PluginRef, Path]] = []
        self.checked_out = False
        self.status = 0
        self.api = JobApiLink(env)
        self.cancel_event = anyio.Event()
        self._phases_scope = anyio.CancelScope()
        self.exiting = False  # in `pre-exit`: no longer to be cut short

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    # --- hook lookup -----------------------------------------------------------------------

    def _agent_hooks(self, phase: str) -> list[Hook]:
        found = (hooks.find(d, phase, "agent") for d in self.settings.hooks_paths)
        return [h for h in found if h is not None]

    def _repository_hooks(self, phase: str) -> list[Hook]:
        if not self.checked_out:
            return []
        if not self.settings.local_hooks_enabled:
            return []  # and `do_checkout` refused a repository that has some
        dirs = hooks.repository_hook_dirs(self.settings.checkout_path)
        found = (hooks.find(d, phase, "repository", confine=d) for d in dirs)
        return [h for h in found if h is not None][:1]

    def _plugin_hooks(self, phase: str) -> list[Hook]:
        found = (
            hooks.find(path / "hooks", phase, f"plugin {plugin.name}")
            for plugin, path in self.plugin_dirs
        )
        return [h for h in found if h is not None]

    def forward(self, phase: str) -> list[Hook]:
        return [
            *self._agent_hooks(phase),
            *self._repository_hooks(phase),
            *self._plugin_hooks(phase),
        ]

    def reverse(self, phase: str) -> list[Hook]:
        return [
            *reversed(self._plugin_hooks(phase)),
            *self._repository_hooks(phase),
            *self._agent_hooks(phase),
        ]

    # --- running ---------------------------------------------------------------------------

    async def run_hooks(self, found: list[Hook]) -> int:
        """Run each hook in turn; the first failure ends the phase with its status."""
        for hook in found:
            await say(f"~~~ Running {hook.describe()}")
            await self.api.push(self.env)
            try:
                result = await hooks.run_hook(
                    hook, shell=self.settings.shell, env=self.env, cwd=self.cwd
                )
            except OSError as exc:
                await note(f"error: {hook.describe()} could not be run: {exc}")
                return 1
            for name in result.dropped:
                await note(f"warning: {hook.describe()} may not change ${name}: change ignored")
            if result.status != 0:
                await note(f"error: {hook.describe()} exited with status {result.status}")
                return result.status
            self.env, self.cwd = result.env, result.cwd
            apply_changes(self.env, await self.api.changes())
        return 0

    async def phase(self, name: str, *, reverse: bool = False) -> int:
        return await self.run_hooks(self.reverse(name) if reverse else self.forward(name))

    async def setup_plugins(self) -> None:
        wanted = self.settings.plugins
        if not wanted:
            return
        if not self.settings.plugins_enabled:
            raise JobSetupError("this step uses plugins, but plugins are off on this agent")
        pattern = self.settings.allowed_plugins
        for plugin in wanted:
            if pattern and not re.search(pattern, plugin.source):
                raise JobSetupError(
                    f"plugin {plugin.source} is not allowed on this agent (allowed: {pattern!r})"
                )
        fetched = [p for p in wanted if not p.vendored]
        if fetched:
            await say("~~~ Setting up plugins")
        for plugin in fetched:
            path = await plugins.fetch(plugin, self.settings.plugins_path, env=self.env, say=note)
            self.plugin_dirs.append((plugin, path))
            self.env.update(plugin.env)

    async def vendored_plugins(self) -> int:
        """Plugins kept in the repository (a relative path): found once it is checked out;
        their `environment` hooks run then."""
        vendored = [p for p in self.settings.plugins if p.vendored]
        found: list[Hook] = []
        root = self.settings.checkout_path.resolve()
        for plugin in vendored:
            path = (self.settings.checkout_path / plugin.location).resolve()
            if not path.is_relative_to(root) or not path.is_dir():
                raise JobSetupError(
                    f"plugin {plugin.source}: no directory {plugin.location} in the checkout"
                )
            self.plugin_dirs.append((plugin, path))
            self.env.update(plugin.env)
            hook = hooks.find(path / "hooks", "environment", f"plugin {plugin.name}")
            if hook is not None:
                found.append(hook)
        return await self.run_hooks(found)

    def refresh(self) -> None:
        """What hooks may change of the job (repository, commit, branch, command, checkout
        path, artifact paths) is read again from the env before the step that uses it."""
        again = Settings.from_env(self.env)
        self.settings = dataclasses.replace(
            self.settings,
            command=again.command,
            checkout_path=again.checkout_path,
            repository=again.repository,
            commit=again.commit,
            branch=again.branch,
            artifact_paths=again.artifact_paths,
        )

    async def do_checkout(self) -> int:
        self.refresh()
        plugin_checkout = self._plugin_hooks("checkout")[:1]
        hook = plugin_checkout or self._agent_hooks("checkout")[:1]
        if hook:
            status = await self.run_hooks(hook)
        elif self.settings.repository:
            shown = plugins.without_credentials(self.settings.repository)
            await say(f"~~~ Checking out {shown}")
            source = checkout.Source(
                self.settings.repository, self.settings.commit, self.settings.branch
            )
            mirrors = self.settings.git_mirrors_path
            status = await checkout.checkout(
                source,
                self.settings.checkout_path,
                env=self.env,
                say=note,
                mirrors=checkout.Mirrors(mirrors, self.settings.git_mirrors_lock_timeout)
                if mirrors is not None
                else None,
            )
        else:
            # No repository (`conveyor run`, a build without one): the directory as it is.
            await anyio.Path(self.settings.checkout_path).mkdir(parents=True, exist_ok=True)
            status = 0
        if status == 0:
            self.checked_out = True
            self.cwd = self.settings.checkout_path
            dirs = hooks.repository_hook_dirs(self.settings.checkout_path)
            if dirs and not self.settings.local_hooks_enabled:
                names = ", ".join(str(d) for d in dirs)
                raise JobSetupError(f"the repository has hooks ({names}) but local hooks are off")
        return status

    async def do_command(self) -> int:
        self.refresh()
        command_hooks = (
            self._plugin_hooks("command")[:1]
            or (self._repository_hooks("command") or self._agent_hooks("command"))[:1]
        )
        if command_hooks:
            return await self.run_hooks(command_hooks)
        if not self.settings.command.strip():
            await note("error: the step has no command and no command hook")
            return 1
        await say("~~~ Running commands")
        argv = [*shlex.split(self.settings.shell), self.settings.command]
        await self.api.push(self.env)
        status = await run_child(argv, env=self.env, cwd=self.cwd)
        # The command's own exports end with it; what it set through the job API stays.
        apply_changes(self.env, await self.api.changes())
        return status

    async def upload_artifacts(self) -> int:
        await say("~~~ Uploading artifacts")
        # The job's own `conveyor artifact upload`, with the job's token: the executor itself
        # speaks no HTTP.
        argv = [
            sys.executable,
            "-m",
            "conveyor",
            "artifact",
            "upload",
            *self.settings.artifact_paths,
        ]
        status = await run_child(argv, env=self.env, cwd=self.cwd)
        if status != 0:
            await note(f"error: uploading artifacts failed with status {status}")
        return status

    def _fail(self, status: int) -> None:
        if self.status == 0 and status != 0:
            self.status = status

    async def run(self) -> int:
        try:
            # A cancel ends the phases at once, also a checkout retrying or a lock wait.
            with self._phases_scope:
                await self._run_phases()
        except (JobSetupError, OSError, ValueError) as exc:
            await note(f"error: {_reason(exc)}")
            self._fail(1)
        finally:
            self.exiting = True
            try:
                if not await anyio.Path(self.cwd).is_dir():
                    # A checkout stopped half way removed it: `pre-exit` runs where it was.
                    self.cwd = self.settings.checkout_path
                    await anyio.Path(self.cwd).mkdir(parents=True, exist_ok=True)
                self._fail(await self.phase("pre-exit", reverse=True))
            except (JobSetupError, OSError, ValueError) as exc:
                await note(f"error: {_reason(exc)}")
                self._fail(1)
        return self.status

    async def _run_phases(self) -> None:
        steps: list[Callable[[], Awaitable[int]]] = [
            lambda: self.phase("environment"),
            self._plugins_then_environment,
            lambda: self.phase("pre-checkout"),
            self.do_checkout,
            lambda: self.phase("post-checkout", reverse=True),
            self.vendored_plugins,
            lambda: self.phase("pre-command"),
        ]
        for step in steps:
            if self.cancelled:
                return
            status = await step()
            if status != 0:
                self._fail(status)
                return
        if self.cancelled:
            return
        self.status = await self.do_command()
        if self.cancelled:
            return
        self._fail(await self.phase("post-command", reverse=True))
        if self.settings.artifact_paths and not self.cancelled:
            self._fail(await self.phase("pre-artifact"))
            self._fail(await self.upload_artifacts())
            self._fail(await self.phase("post-artifact"))

    async def _plugins_then_environment(self) -> int:
        await self.setup_plugins()
        return await self.run_hooks(self._plugin_hooks("environment"))

    def cancel(self) -> None:
        """A cancel signal arrived: the running child has it too; later phases are skipped."""
        self.cancel_event.set()
        self._phases_scope.cancel()
        self.env["CONVEYOR_JOB_CANCELLED"] = self.env["BUILDKITE_JOB_CANCELLED"] = "true"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


async def execute(env: Mapping[str, str]) -> int:
    """Run the job the environment describes; the executor's exit status."""
    try:
        settings = Settings.from_env(env)
    except JobSetupError as exc:
        await note(f"error: {exc}")
        return 1
    become_subreaper()
    # Hooks before the checkout run where it will be: the agent's directory for this pipeline.
    try:
        await anyio.Path(settings.checkout_path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        await note(f"error: cannot make the job's directory: {_reason(exc)}")
        return 1
    executor = Executor(settings, env)
    status = 0
    async with anyio.create_task_group() as tg:

        async def watch_signals() -> None:
            with anyio.open_signal_receiver(*CANCEL_SIGNALS) as sigs:
                async for signum in sigs:
                    await note(f"received {signum.name}: cancelling the job")
                    executor.cancel()
                    nonlocal status
                    status = 128 + signum

        async def stop_the_job_in_time() -> None:
            # Half the grace for the running hook or command to stop by itself, then SIGKILL
            # for it: the other half is `pre-exit`'s, before the agent kills everything.
            await executor.cancel_event.wait()
            await anyio.sleep(settings.cancel_grace / 2)
            if not executor.exiting:
                await note("the job did not stop in time: killing its processes")
                await kill_descendants()

        tg.start_soon(watch_signals)
        tg.start_soon(stop_the_job_in_time)
        try:
            result = await executor.run()
        finally:
            with anyio.CancelScope(shield=True):
                await stop_leftovers(note)
            tg.cancel_scope.cancel()
    return status or result


def main() -> None:
    status = anyio.run(execute, dict(os.environ))
    sys.stdout.flush()
    # At once, without joining threads: a mirror-lock wait given up at its deadline is still
    # blocked in its thread, and would hold the exit until the lock came free.
    os._exit(status)
