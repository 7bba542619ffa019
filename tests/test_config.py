"""Settings loading: precedence, per-source errors, ping-interval rules, parsing of env strings."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from conveyor.config import (
    AgentSettings,
    ClientSettings,
    Loaded,
    RunSettings,
    ServerSettings,
    env_var_names,
    load_settings,
    parse_tags,
)
from conveyor.errors import ConfigError

AGENT_PREFIXES = ("CONVEYOR_", "CONVEYOR_AGENT_")


def write(tmp_path: Path, text: str, name: str = "conf.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def agent(
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Loaded[AgentSettings]:
    return load_settings(
        AgentSettings,
        flags=flags or {},
        env=env or {},
        config_file=config_file,
        env_prefixes=AGENT_PREFIXES,
    )


def agent_error(
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        agent(flags=flags, env=env, config_file=config_file)
    return info.value


# --- precedence -------------------------------------------------------------------------------


def test_defaults_when_nothing_is_given() -> None:
    loaded = agent()
    assert loaded.settings.spawn == 1
    assert loaded.settings.endpoint == "http://127.0.0.1:8080"
    assert loaded.settings.tags == {}
    assert loaded.warnings == []
    assert set(loaded.sources) == set(AgentSettings.model_fields)
    assert set(loaded.sources.values()) == {"default"}


def test_file_beats_default(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 3\n")
    loaded = agent(config_file=conf)
    assert loaded.settings.spawn == 3
    assert loaded.sources["spawn"] == f"file {conf}"
    assert loaded.sources["priority"] == "default"


def test_env_beats_file(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 3\n")
    loaded = agent(env={"CONVEYOR_SPAWN": "4"}, config_file=conf)
    assert loaded.settings.spawn == 4
    assert loaded.sources["spawn"] == "env CONVEYOR_SPAWN"


def test_flag_beats_env() -> None:
    loaded = agent(flags={"spawn": 5}, env={"CONVEYOR_SPAWN": "4"})
    assert loaded.settings.spawn == 5
    assert loaded.sources["spawn"] == "flag --spawn"


def test_flag_beats_file(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 3\n")
    loaded = agent(flags={"spawn": "6"}, config_file=conf)
    assert loaded.settings.spawn == 6
    assert loaded.sources["spawn"] == "flag --spawn"


def test_flag_beats_env_beats_file_per_field(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 3\npriority: 7\nqueue: from-file\n")
    loaded = agent(
        flags={"spawn": 9, "priority": None},
        env={"CONVEYOR_PRIORITY": "8"},
        config_file=conf,
    )
    assert (loaded.settings.spawn, loaded.settings.priority) == (9, 8)
    assert loaded.settings.queue == "from-file"
    assert loaded.sources["spawn"] == "flag --spawn"
    assert loaded.sources["priority"] == "env CONVEYOR_PRIORITY"
    assert loaded.sources["queue"] == f"file {conf}"
    assert loaded.sources["name"] == "default"


def test_none_flag_means_not_given() -> None:
    loaded = agent(flags={"spawn": None, "no_pty": None}, env={"CONVEYOR_SPAWN": "2"})
    assert loaded.settings.spawn == 2
    assert loaded.settings.no_pty is False
    assert loaded.sources["no_pty"] == "default"


def test_flags_accept_kebab_case_keys() -> None:
    loaded = agent(flags={"build-path": "/b"})
    assert loaded.settings.build_path == Path("/b")
    assert loaded.sources["build_path"] == "flag --build-path"


def test_unknown_flag_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="AgentSettings has no setting 'config'"):
        agent(flags={"config": "x.yml"})


def test_agent_prefix_beats_generic_prefix() -> None:
    env = {"CONVEYOR_PING_INTERVAL": "5", "CONVEYOR_AGENT_PING_INTERVAL": "7"}
    loaded = agent(env=env)
    assert loaded.settings.ping_interval == 7
    assert loaded.sources["ping_interval"] == "env CONVEYOR_AGENT_PING_INTERVAL"


def test_generic_prefix_used_when_specific_is_absent() -> None:
    loaded = agent(env={"CONVEYOR_PING_INTERVAL": "5"})
    assert loaded.settings.ping_interval == 5
    assert loaded.sources["ping_interval"] == "env CONVEYOR_PING_INTERVAL"


def test_later_prefix_wins_whatever_its_name() -> None:
    env = {"CONVEYOR_SPAWN": "3", "CONVEYOR_AGENT_SPAWN": "4"}
    loaded = load_settings(
        AgentSettings,
        flags={},
        env=env,
        config_file=None,
        env_prefixes=("CONVEYOR_AGENT_", "CONVEYOR_"),
    )
    assert loaded.settings.spawn == 3


def test_unknown_conveyor_env_vars_are_ignored() -> None:
    env = {"CONVEYOR_JOB_ID": "j-1", "CONVEYOR_BUILD_NUMBER": "x", "CONVEYOR_AGENT_FOO": "1"}
    loaded = agent(env=env)
    assert loaded.settings == AgentSettings()


# --- the config file --------------------------------------------------------------------------


def test_unknown_file_key_names_key_file_line_and_valid_keys(tmp_path: Path) -> None:
    conf = write(tmp_path, "# agent\nspawn: 2\nspwan: 3\n")
    err = agent_error(config_file=conf)
    assert str(err).startswith(f"unknown key 'spwan' in config file {conf} line 3; valid keys: ")
    assert "build-path" in str(err)
    assert "ping-interval" in str(err)
    assert err.key == "spwan"
    assert err.source == f"file {conf}"


def test_file_accepts_snake_case_keys(tmp_path: Path) -> None:
    conf = write(tmp_path, "build_path: /x\ncancel-grace-period: 3\n")
    loaded = agent(config_file=conf)
    assert loaded.settings.build_path == Path("/x")
    assert loaded.settings.cancel_grace_period == 3


def test_file_key_given_in_both_spellings_is_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, "build_path: /x\nbuild-path: /y\n")
    err = agent_error(config_file=conf)
    assert str(err) == f"build-path is given twice in config file {conf}"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    err = agent_error(config_file=missing)
    assert str(err) == f"config file {missing} not found"


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 2\nname: [unclosed\nqueue: q\n")
    err = agent_error(config_file=conf)
    assert str(err).startswith(f"config file {conf} line ")
    assert "Traceback" not in str(err)
    line = int(str(err).split(" line ")[1].split()[0])
    assert line in (2, 3)


def test_duplicate_yaml_key_is_reported_with_its_line(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn: 2\nspawn: 3\n")
    err = agent_error(config_file=conf)
    assert str(err).startswith(f"config file {conf} line 2 column 1: found duplicate key")


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_non_mapping_file_is_an_error(tmp_path: Path, text: str, kind: str) -> None:
    conf = write(tmp_path, text)
    err = agent_error(config_file=conf)
    assert str(err) == f"config file {conf} must be a mapping of settings (got a {kind})"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    conf = write(tmp_path, "# nothing set yet\n")
    assert agent(config_file=conf).settings == AgentSettings()


def test_file_uses_yaml_1_2_booleans(tmp_path: Path) -> None:
    conf = write(tmp_path, "no-pty: true\ndisconnect-after-job: false\n")
    loaded = agent(config_file=conf)
    assert loaded.settings.no_pty is True
    assert loaded.settings.disconnect_after_job is False


def test_file_number_for_a_string_setting_asks_for_quotes(tmp_path: Path) -> None:
    conf = write(tmp_path, "queue: 2024\n")
    err = agent_error(config_file=conf)
    assert str(err) == (
        f"invalid value for queue from file {conf}: expected a string (got 2024); quote it in YAML"
    )


def test_file_null_for_optional_setting_is_none(tmp_path: Path) -> None:
    conf = write(tmp_path, "queue:\n")
    loaded = agent(config_file=conf)
    assert loaded.settings.queue is None
    assert loaded.sources["queue"] == f"file {conf}"


def test_file_null_for_required_setting_is_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, "spawn:\n")
    err = agent_error(config_file=conf)
    assert str(err) == f"invalid value for spawn from file {conf}: a value is required (got null)"


# --- bad values name their source -------------------------------------------------------------


def test_bad_int_from_env_names_the_variable() -> None:
    err = agent_error(env={"CONVEYOR_SPAWN": "abc"})
    assert str(err) == "invalid value for spawn from env CONVEYOR_SPAWN: 'abc' is not an integer"
    assert err.key == "spawn"
    assert err.source == "env CONVEYOR_SPAWN"


def test_bad_int_from_flag_names_the_flag() -> None:
    err = agent_error(flags={"priority": "high"})
    assert str(err) == "invalid value for priority from flag --priority: 'high' is not an integer"
    assert err.source == "flag --priority"


def test_bad_int_from_file_names_the_file(tmp_path: Path) -> None:
    conf = write(tmp_path, "cancel-grace-period: soon\n")
    err = agent_error(config_file=conf)
    assert str(err) == (
        f"invalid value for cancel-grace-period from file {conf}: 'soon' is not an integer"
    )
    assert err.key == "cancel-grace-period"
    assert err.source == f"file {conf}"


def test_yaml_boolean_is_not_an_int(tmp_path: Path) -> None:
    conf = write(tmp_path, "priority: true\n")
    err = agent_error(config_file=conf)
    assert (
        str(err) == f"invalid value for priority from file {conf}: expected an integer (got true)"
    )


@pytest.mark.parametrize("text", ["12", " 12 ", "+12"])
def test_int_from_env_is_parsed_strictly_ok(text: str) -> None:
    assert agent(env={"CONVEYOR_PRIORITY": text}).settings.priority == 12


@pytest.mark.parametrize("text", ["1_2", "0x10", "", "12abc", "inf"])
def test_int_from_env_rejects_non_decimal(text: str) -> None:
    err = agent_error(env={"CONVEYOR_PRIORITY": text})
    assert (
        str(err)
        == f"invalid value for priority from env CONVEYOR_PRIORITY: {text!r} is not an integer"
    )


def test_range_error_names_source_without_pydantic_noise() -> None:
    err = agent_error(env={"CONVEYOR_AGENT_SPAWN": "0"})
    assert str(err) == "invalid value for spawn from env CONVEYOR_AGENT_SPAWN: must be >= 1 (got 0)"
    assert "pydantic" not in str(err)


def test_negative_grace_period_is_rejected() -> None:
    err = agent_error(flags={"cancel_grace_period": -1})
    assert str(err) == (
        "invalid value for cancel-grace-period from flag --cancel-grace-period: "
        "must be >= 0 (got -1)"
    )


def test_endpoint_must_be_http_url() -> None:
    err = agent_error(env={"CONVEYOR_ENDPOINT": "ftp://ci.example"})
    assert str(err) == (
        "invalid value for endpoint from env CONVEYOR_ENDPOINT: "
        "must be an http:// or https:// URL (got 'ftp://ci.example')"
    )
    assert (
        agent(flags={"endpoint": "https://ci.example/"}).settings.endpoint == "https://ci.example/"
    )


def test_client_endpoint_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="must be an http:// or https:// URL"):
        load_settings(ClientSettings, flags={"endpoint": "ci.example"}, env={}, config_file=None)


# --- ping interval ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [2.5, "2.5"])
def test_ping_interval_float_from_flag_is_integers_only(value: object) -> None:
    err = agent_error(flags={"ping_interval": value})
    assert str(err) == (
        "invalid value for ping-interval from flag --ping-interval: integers only (got 2.5)"
    )
    assert err.key == "ping-interval"


@pytest.mark.parametrize("text", ["2.5", "3.", "1e3"])
def test_ping_interval_float_from_env_is_integers_only(text: str) -> None:
    err = agent_error(env={"CONVEYOR_AGENT_PING_INTERVAL": text})
    assert str(err) == (
        "invalid value for ping-interval from env CONVEYOR_AGENT_PING_INTERVAL: "
        f"integers only (got {text})"
    )


def test_ping_interval_float_from_file_is_integers_only(tmp_path: Path) -> None:
    conf = write(tmp_path, "ping-interval: 2.5\n")
    err = agent_error(config_file=conf)
    assert str(err) == f"invalid value for ping-interval from file {conf}: integers only (got 2.5)"


def test_ping_interval_zero_and_unset_mean_server_value() -> None:
    assert agent().settings.ping_interval == 0
    loaded = agent(flags={"ping_interval": 0})
    assert loaded.settings.ping_interval == 0
    assert loaded.warnings == []


def test_ping_interval_one_is_clamped_to_two_with_a_warning() -> None:
    loaded = agent(env={"CONVEYOR_PING_INTERVAL": "1"})
    assert loaded.settings.ping_interval == 2
    assert loaded.warnings == [
        "ping-interval 1 from env CONVEYOR_PING_INTERVAL is below the minimum of 2 seconds; using 2"
    ]


def test_ping_interval_two_and_above_kept() -> None:
    loaded = agent(flags={"ping_interval": 2})
    assert loaded.settings.ping_interval == 2
    assert loaded.warnings == []
    assert agent(flags={"ping_interval": 30}).settings.ping_interval == 30


def test_ping_interval_negative_is_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, "ping-interval: -1\n")
    err = agent_error(config_file=conf)
    assert str(err) == (
        f"invalid value for ping-interval from file {conf}: "
        "must be 0 (use the server's value) or a number of seconds >= 2 (got -1)"
    )


def test_ping_interval_clamped_silently_when_built_directly() -> None:
    assert AgentSettings(ping_interval=1).ping_interval == 2


# --- tags -------------------------------------------------------------------------------------


def test_parse_tags() -> None:
    assert parse_tags("os=linux, arch = arm64 ,gpu=") == {"os": "linux", "arch": "arm64", "gpu": ""}
    assert parse_tags("") == {}
    assert parse_tags("  ") == {}
    assert parse_tags("a=b,") == {"a": "b"}
    assert parse_tags("url=http://x?a=b") == {"url": "http://x?a=b"}


@pytest.mark.parametrize("text", ["os=linux,docker", "=x"])
def test_parse_tags_rejects_item_without_key_value(text: str) -> None:
    bad = text.split(",")[-1]
    with pytest.raises(ConfigError, match=f"tag '{bad}' is not of the form key=value"):
        parse_tags(text)


def test_tags_from_flag_string() -> None:
    loaded = agent(flags={"tags": "os=linux,queue=fast"})
    assert loaded.settings.tags == {"os": "linux", "queue": "fast"}
    assert loaded.sources["tags"] == "flag --tags"


def test_tags_from_env_with_bad_item_names_item_and_source() -> None:
    err = agent_error(env={"CONVEYOR_TAGS": "os=linux,docker"})
    assert str(err) == (
        "invalid value for tags from env CONVEYOR_TAGS: tag 'docker' is not of the form key=value"
    )


def test_tags_from_file_mapping(tmp_path: Path) -> None:
    conf = write(tmp_path, "tags:\n  os: linux\n  cores: 8\n  gpu: true\n")
    assert agent(config_file=conf).settings.tags == {"os": "linux", "cores": "8", "gpu": "true"}


def test_tags_from_file_string(tmp_path: Path) -> None:
    conf = write(tmp_path, "tags: os=linux, arch=amd64\n")
    assert agent(config_file=conf).settings.tags == {"os": "linux", "arch": "amd64"}


def test_tags_from_file_with_nested_value_names_the_item(tmp_path: Path) -> None:
    conf = write(tmp_path, "tags:\n  os: [linux]\n")
    err = agent_error(config_file=conf)
    assert str(err) == (
        f"invalid value for tags from file {conf}: "
        "tag 'os': ['linux'] is not a key with a scalar value"
    )


def test_tags_from_file_list_is_rejected(tmp_path: Path) -> None:
    conf = write(tmp_path, "tags: [a, b]\n")
    err = agent_error(config_file=conf)
    assert "expected a mapping or 'k=v,k2=v2'" in str(err)
    assert err.source == f"file {conf}"


# --- booleans, paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("Yes", True), ("false", False),
     ("0", False), ("no", False), ("NO", False)],
)  # fmt: skip
def test_bool_from_env(text: str, expected: bool) -> None:
    loaded = agent(env={"CONVEYOR_NO_PTY": text})
    assert loaded.settings.no_pty is expected
    assert loaded.sources["no_pty"] == "env CONVEYOR_NO_PTY"


def test_bad_bool_from_env_names_variable() -> None:
    err = agent_error(env={"CONVEYOR_AGENT_DISCONNECT_AFTER_JOB": "maybe"})
    assert str(err) == (
        "invalid value for disconnect-after-job from env CONVEYOR_AGENT_DISCONNECT_AFTER_JOB: "
        "expected true/false, yes/no or 1/0 (got 'maybe')"
    )


def test_bool_flag_value_kept() -> None:
    assert agent(flags={"no_pty": True}).settings.no_pty is True


def test_paths_are_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert agent().settings.build_path == tmp_path / ".conveyor" / "builds"
    assert agent(flags={"build_path": "~/b"}).settings.build_path == tmp_path / "b"
    conf = write(tmp_path, "data-dir: ~/srv\n")
    server = load_settings(ServerSettings, flags={}, env={}, config_file=conf).settings
    assert server.data_dir == tmp_path / "srv"
    run = load_settings(RunSettings, flags={}, env={"CONVEYOR_DATA_DIR": "~/r"}, config_file=None)
    assert run.settings.data_dir == tmp_path / "r"


def test_run_settings_data_dir_defaults_to_none() -> None:
    loaded = load_settings(RunSettings, flags={"agents": 3}, env={}, config_file=None)
    assert loaded.settings.data_dir is None
    assert loaded.settings.agents == 3


def test_empty_env_for_optional_setting_means_none() -> None:
    assert agent(env={"CONVEYOR_QUEUE": ""}).settings.queue is None


# --- server -----------------------------------------------------------------------------------


def server(**flags: object) -> ServerSettings:
    return load_settings(ServerSettings, flags=flags, env={}, config_file=None).settings


@pytest.mark.parametrize(
    "url",
    ["sqlite:///tmp/c.db", "sqlite+aiosqlite:///c.db", "postgresql://u@h/db",
     "postgresql+asyncpg://u@h:5432/db"],
)  # fmt: skip
def test_database_url_accepted_schemes(url: str) -> None:
    assert server(database_url=url).database_url == url


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgres://u@h/db", "sqlite", "/tmp/c.db"])
def test_database_url_other_schemes_rejected(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        server(database_url=url)
    assert str(info.value) == (
        "invalid value for database-url from flag --database-url: "
        f"must be a sqlite:// or postgresql:// URL (got {url!r})"
    )


def test_database_url_default_is_none() -> None:
    assert server().database_url is None


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "0.0.0.0:0", "ci.local:65535", "[::1]:80"])
def test_listen_accepted(listen: str) -> None:
    assert server(listen=listen).listen == listen


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:65536", ":8080", "host:http", "h:-1"])
def test_listen_rejected(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        server(listen=listen)
    assert str(info.value) == (
        "invalid value for listen from flag --listen: "
        f"must be host:port with a port from 0 to 65535 (got {listen!r})"
    )


def test_server_ranges_and_log_level(tmp_path: Path) -> None:
    assert server(log_level="WARNING").log_level == "warning"
    with pytest.raises(
        ConfigError, match=r"log-level .*must be one of debug, info, warning, error"
    ):
        server(log_level="verbose")
    with pytest.raises(ConfigError, match=r"chunk-max-size .*must be >= 1024 \(got 1000\)"):
        server(chunk_max_size=1000)
    with pytest.raises(ConfigError, match=r"agent-lost-timeout .*must be >= 1 \(got 0\)"):
        server(agent_lost_timeout=0)
    with pytest.raises(ConfigError, match=r"external-url .*must be an http"):
        server(external_url="ci.example.com")


# --- env_var_names ----------------------------------------------------------------------------


def test_env_var_names_covers_every_field_and_prefix() -> None:
    names = env_var_names(AgentSettings, AGENT_PREFIXES)
    assert "CONVEYOR_TOKEN" in names
    assert "CONVEYOR_AGENT_TOKEN" in names
    assert "CONVEYOR_AGENT_PING_INTERVAL" in names
    assert "CONVEYOR_BUILD_PATH" in names
    assert len(names) == 2 * len(AgentSettings.model_fields)
    assert env_var_names(ClientSettings) == {"CONVEYOR_ENDPOINT", "CONVEYOR_API_TOKEN"}


def test_env_var_names_are_exactly_what_the_loader_reads() -> None:
    # Every name the loader reads is in the set: setting each one changes the result.
    for var in env_var_names(ClientSettings, ("CONVEYOR_", "X_")):
        value = "https://x.example" if var.endswith("ENDPOINT") else "t"
        loaded = load_settings(
            ClientSettings,
            flags={},
            env={var: value},
            config_file=None,
            env_prefixes=("CONVEYOR_", "X_"),
        )
        assert set(loaded.sources.values()) - {"default"} == {f"env {var}"}


def test_paths_are_made_absolute() -> None:
    cfg = AgentSettings(build_path=Path("rel/builds"), hooks_path=Path("~/hooks"))
    assert cfg.build_path == Path.cwd() / "rel" / "builds"
    assert cfg.hooks_path == Path("~/hooks").expanduser()
    assert cfg.hooks_path.is_absolute()
