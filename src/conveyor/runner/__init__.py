"""Running one job: the process (PTY, process group, signals), the log path to a sink, the
redactor, and the job executor (`bootstrap`: hooks, plugins, checkout, command).

The runner is handed a `LogSink`; it never talks to a server itself, so it is tested without one.
Import from the modules: the executor starts once per job, and imports only what it uses.
"""
