"""Typed settings for each command, and the loader that fills them.

Every setting is a field of a frozen pydantic model (`AgentSettings`, `ServerSettings`,
`ClientSettings`, `RunSettings`). A field has one user-facing key, its kebab-case flag name,
and can come from four sources, highest precedence first:

    flag     --build-path ~/b                 (the CLI passes {"build_path": "~/b"})
    env      CONVEYOR_BUILD_PATH=~/b          (for each prefix; a later prefix is more specific
                                               and wins: CONVEYOR_AGENT_X beats CONVEYOR_X)
    file     build-path: ~/b                  (YAML 1.2 mapping; build_path is accepted too)
    default  the model's default

Only the winning value of a field is read, and it is checked against that one source, so an
error names the key and where the bad value came from ("invalid value for spawn from env
CONVEYOR_SPAWN: 'abc' is not an integer"). `load_settings` returns the settings, the source of
each field, and warnings for the CLI to print (values that were adjusted, e.g. a ping interval
clamped to 2): the `warnings` module is not used because a warning here is for the user.
"""

from __future__ import annotations

import re
import shlex
import signal
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Generic, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from conveyor.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

# validate_default so that defaults go through the same validators (e.g. `~` expansion).
_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, validate_default=True)
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MIN_PING_INTERVAL = 2


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http:// or https:// URL (got {value!r})")
    return value


HttpURL = Annotated[str, AfterValidator(_http_url)]
# Paths are expanded and made absolute once, here, so that nothing downstream sees a literal
# "~", and a job (which runs elsewhere) finds the same place as the command that was given it.
ExpandedPath = Annotated[Path, AfterValidator(lambda p: p.expanduser().absolute())]


class AgentSettings(BaseModel):
    model_config = _MODEL_CONFIG

    endpoint: HttpURL = "http://127.0.0.1:8080"
    token: str | None = None
    name: str = "%hostname-%spawn"
    tags: dict[str, str] = Field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    spawn: int = Field(default=1, ge=1)
    build_path: ExpandedPath = Path("~/.conveyor/builds")
    shell: Shell = "/bin/bash -e -c"
    ping_mode: Literal["auto", "ping-only", "stream-only"] = "auto"
    ping_interval: int = 0
    cancel_grace_period: int = Field(default=10, ge=0)
    no_pty: bool = False
    disconnect_after_job: bool = False
    disconnect_after_idle_timeout: int = Field(default=0, ge=0)
    disconnect_after_uptime: int = Field(default=0, ge=0)
    acquire_job: str | None = None
    hooks_path: ExpandedPath | None = None
    plugins_path: ExpandedPath = Path("~/.conveyor/plugins")
    no_plugins: bool = False
    allowed_plugins: str | None = None
    no_local_hooks: bool = False
    cancel_signal: str = "SIGTERM"
    git_mirrors_path: ExpandedPath | None = None
    git_mirrors_lock_timeout: int = Field(default=300, gt=0)
    max_log_size: int = Field(default=1024**3, ge=1024)
    # Globs of variable names whose values are redacted from job logs.
    redacted_vars: str = (
        "*_PASSWORD,*_SECRET,*_TOKEN,*_PRIVATE_KEY,*_SSH_KEY,*_ACCESS_KEY,*_SECRET_KEY,"
        "*_API_KEY,*_CONNECTION_STRING"
    )
    shutdown_hook: ExpandedPath | None = None
    health_check_addr: str | None = None
    # Machine-scope locks (`conveyor lock`); None: $TMPDIR/conveyor-locks-<uid>.
    locks_dir: ExpandedPath | None = None

    @field_validator("health_check_addr")
    @classmethod
    def _health_check_addr(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("allowed_plugins")
    @classmethod
    def _allowed_plugins(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a regular expression: {exc} (got {value!r})") from None
        return value

    @field_validator("cancel_signal")
    @classmethod
    def _cancel_signal(cls, value: str) -> str:
        name = value.upper() if value.upper().startswith("SIG") else "SIG" + value.upper()
        if name not in signal.Signals.__members__:
            raise ValueError(f"must be a signal name such as SIGTERM or SIGINT (got {value!r})")
        return name

    @field_validator("ping_interval")
    @classmethod
    def _ping_interval(cls, value: int, info: ValidationInfo) -> int:
        # Product rule: 0 means "use the server's value"; 1 is too chatty and is raised to 2.
        if value < 0:
            raise ValueError(
                f"must be 0 (use the server's value) or a number of seconds >= 2 (got {value})"
            )
        if 0 < value < _MIN_PING_INTERVAL:
            # Only the loader passes a context; a model built directly is adjusted silently.
            if isinstance(info.context, dict):
                source = info.context["sources"]["ping_interval"]
                info.context["warnings"].append(
                    f"ping-interval {value} from {source} is below the minimum of "
                    f"{_MIN_PING_INTERVAL} seconds; using {_MIN_PING_INTERVAL}"
                )
            return _MIN_PING_INTERVAL
        return value


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 hosts in brackets) → (host, port); ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port from 0 to 65535 (got {value!r})")
    return host.strip("[]"), int(port)


def _shell_words(value: str) -> str:
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words: {exc} (got {value!r})") from None
    if not words:
        raise ValueError("must name a program")
    return value


# The shell is split like a command line: a quote left open is an error here, not at a job.
Shell = Annotated[str, AfterValidator(_shell_words)]


class ServerSettings(BaseModel):
    model_config = _MODEL_CONFIG

    listen: str = "127.0.0.1:8080"
    data_dir: ExpandedPath = Path("~/.conveyor/server")
    database_url: str | None = None
    external_url: HttpURL | None = None
    agent_lost_timeout: int = Field(default=180, ge=1)
    chunk_max_size: int = Field(default=1048576, ge=1024)
    artifact_max_size: int = Field(default=5 * 1024**3, ge=1)
    log_level: str = "info"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # "sqlite+aiosqlite://" and "postgresql+asyncpg://" name a driver after the dialect.
        scheme = value.partition("://")[0] if "://" in value else ""
        if scheme.partition("+")[0] not in ("sqlite", "postgresql"):
            raise ValueError(f"must be a sqlite:// or postgresql:// URL (got {value!r})")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in _LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(_LOG_LEVELS)} (got {value!r})")
        return value.lower()


class ClientSettings(BaseModel):
    model_config = _MODEL_CONFIG

    endpoint: HttpURL = "http://127.0.0.1:8080"
    api_token: str | None = None


class RunSettings(BaseModel):
    model_config = _MODEL_CONFIG

    agents: int = Field(default=2, ge=1)
    data_dir: ExpandedPath | None = None
    shell: Shell = "/bin/bash -e -c"
    no_pty: bool = False


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What `load_settings` found. `sources` maps each field name to where its value came from:
    "flag --spawn", "env CONVEYOR_SPAWN", "file /path/conf.yml" or "default"."""

    settings: T
    sources: dict[str, str]
    warnings: list[str]


def parse_tags(text: str) -> dict[str, str]:
    """Parse "k=v,k2=v2" (whitespace around items, keys and values ignored; "" gives {})."""
    tags: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # tolerate "a=b," and ",,"
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"tag {item.strip()!r} is not of the form key=value")
        tags[key.strip()] = value.strip()
    return tags


def env_var_names(model: type[BaseModel], prefixes: Sequence[str] = ("CONVEYOR_",)) -> set[str]:
    """Every environment variable `load_settings(model, env_prefixes=prefixes)` reads."""
    return {prefix + name.upper() for prefix in prefixes for name in model.model_fields}


def load_settings(
    model: type[T],
    *,
    flags: Mapping[str, object],
    env: Mapping[str, str],
    config_file: Path | None,
    env_prefixes: Sequence[str] = ("CONVEYOR_",),
) -> Loaded[T]:
    """Build `model` from flags > env > config file > defaults; raise ConfigError if a value is bad.

    `flags` maps field names (kebab-case keys work too) to values; None means "not given".
    Unknown variables in `env` are ignored: jobs export many CONVEYOR_* variables, and an
    agent started inside a job must not trip over them.
    """
    fields = model.model_fields
    by_key = {_key(name): name for name in fields}
    file_values = _read_file(config_file, by_key) if config_file is not None else {}

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name, value in flags.items():
        field = name if name in fields else by_key.get(name)
        if field is None:
            # A CLI wiring bug, not a user mistake: fail loudly rather than drop the flag.
            raise ValueError(f"{model.__name__} has no setting {name!r}")
        if value is not None:
            values[field], sources[field] = value, f"flag --{_key(field)}"
    for name in fields:
        if name in values:
            continue
        for prefix in reversed(env_prefixes):  # later prefixes are more specific
            var = prefix + name.upper()
            if var in env:
                values[name], sources[name] = env[var], f"env {var}"
                break
        else:
            if name in file_values:
                values[name], sources[name] = file_values[name], f"file {config_file}"

    for name, value in values.items():
        try:
            values[name] = _coerce(value, fields[name].annotation)
        except (TypeError, ValueError) as exc:
            raise _invalid(name, sources[name], str(exc)) from None
    for name in fields:
        sources.setdefault(name, "default")

    warnings: list[str] = []
    try:
        settings = model.model_validate(values, context={"warnings": warnings, "sources": sources})
    except ValidationError as exc:
        raise _from_validation(exc, sources) from None
    return Loaded(settings=settings, sources=sources, warnings=warnings)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _invalid(name: str, source: str, problem: str) -> ConfigError:
    key = _key(name)
    return ConfigError(f"invalid value for {key} from {source}: {problem}", key=key, source=source)


def _from_validation(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    # Each field has exactly one source, so the failing field tells where the bad value came from.
    # Only the first error is reported: fixing one value at a time is clear enough.
    error = exc.errors(include_url=False)[0]
    name, ctx = str(error["loc"][0]) if error["loc"] else "", error.get("ctx", {})
    if error["type"] == "value_error":
        problem = str(ctx["error"])
    elif error["type"] == "greater_than_equal":
        problem = f"must be >= {ctx['ge']} (got {error['input']!r})"
    else:
        problem = error["msg"][:1].lower() + error["msg"][1:]
    return _invalid(name, sources.get(name, "default"), problem)


# Python's int() and float() also take "1_000"; settings take plain decimal numbers only.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _coerce(value: object, annotation: object) -> object:
    """Turn one raw value (typed from click or YAML, or a string from env) into the field's type.

    Raises ValueError or TypeError with a message for the user. Range and format rules live on
    the models; this only gets the type right, strictly (no "12.5" -> 12, no `true` -> 1).
    """
    kind, optional = annotation, False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        kind, optional = args[0], True
    if typing.get_origin(kind) is Annotated:
        kind = typing.get_args(kind)[0]
    if value is None or (optional and isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise ValueError("a value is required (got null)")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true/false, yes/no or 1/0 (got {value!r})")
    if kind is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer (got {str(value).lower()})")
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            raise ValueError(f"integers only (got {value})")
        if isinstance(value, str):
            if _INT.fullmatch(value.strip()):
                return int(value.strip())
            if _FLOAT.fullmatch(value.strip()):
                raise ValueError(f"integers only (got {value.strip()})")
            raise ValueError(f"{value!r} is not an integer")
        raise ValueError(f"expected an integer (got {value!r})")
    if kind is Path:
        if isinstance(value, Path | str) and str(value).strip():
            return Path(value)
        raise ValueError(f"expected a path (got {value!r})")
    if typing.get_origin(kind) is dict:
        return _coerce_tags(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string (got {value!r}); quote it in YAML")


def _coerce_tags(value: object) -> dict[str, str]:
    if isinstance(value, str):
        try:
            return parse_tags(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping or 'k=v,k2=v2' (got {value!r})")
    tags: dict[str, str] = {}
    for key, item in value.items():
        # YAML turns `gpu: true` and `cores: 8` into bool and int; tags are strings.
        if isinstance(item, bool):
            item = str(item).lower()
        if not isinstance(key, str | int) or not isinstance(item, str | int | float) or key == "":
            raise ValueError(f"tag {key!r}: {item!r} is not a key with a scalar value")
        tags[str(key)] = str(item)
    return tags


def _read_file(path: Path, by_key: Mapping[str, str]) -> dict[str, object]:
    """Read a YAML config file into {field name: raw value}, rejecting unknown keys by line."""
    # Imported here: a command given no config file (an agent, usually) never loads the parser.
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found", source=f"file {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}", source=f"file {path}") from None
    try:
        # Round-trip loading keeps line numbers for error messages; the safe loader gives plain
        # Python values (the round-trip one wraps anchored scalars in int-like types).
        located = YAML(typ="rt").load(text)
        data = YAML(typ="safe").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}", source=f"file {path}") from None
    except YAMLError as exc:
        raise ConfigError(f"config file {path}: {exc}", source=f"file {path}") from None
    if data is None:
        return {}  # an empty file, or one with only comments
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must be a mapping of settings (got a {type(data).__name__})",
            source=f"file {path}",
        )
    values: dict[str, object] = {}
    for raw_key, value in data.items():
        name = by_key.get(raw_key) if isinstance(raw_key, str) else None
        if name is None and isinstance(raw_key, str) and raw_key in by_key.values():
            name = raw_key  # snake_case spelling of a key
        if name is None:
            line = located.lc.key(raw_key)[0] + 1
            raise ConfigError(
                f"unknown key {raw_key!r} in config file {path} line {line}; "
                f"valid keys: {', '.join(sorted(by_key))}",
                key=str(raw_key),
                source=f"file {path}",
            )
        if name in values:
            msg = f"{_key(name)} is given twice in config file {path}"
            raise ConfigError(msg, key=_key(name), source=f"file {path}")
        values[name] = value
    return values
