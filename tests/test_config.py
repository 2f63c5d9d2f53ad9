"""Config loading: every message names the file, the key and the fix. Pure logic: no DB, no sockets."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import pytest

from shardctl.config import check_config, load_config
from shardctl.config.model import (
    LOCAL_FEED_API_KEY,
    MAX_CONNECTIONS_PER_KEY,
    ShardSettings,
    parse_duration,
)
from shardctl.config.reader import _SECTION_KEYS, _SHARD_KEYS
from shardctl.config.values import TOP_KEYS
from shardctl.errors import EXIT_CONFIG, ConfigError, ConfigErrors, ShardctlError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo.toml"
PROD = REPO / "config" / "prod.toml"

LOCAL = '[source]\nurl = "ws://127.0.0.1:8765/v1/quotes/price"\n'
SECRET = "sk-test-DO-NOT-PRINT-4f2a"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SHARDCTL_STATE_DIR", "TWELVEDATA_API_KEY", "KEY_A", "KEY_B", "SHARDCTL_DSN", "TD_FOREX"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, name: str = "shardctl.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path, **kw) -> list[ConfigError]:
    config, problems, _ = check_config(path, **kw)
    assert (config is None) == bool(problems)
    return problems


def only(problems: list[ConfigError]) -> ConfigError:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def by_key(problems: list[ConfigError], key: str) -> ConfigError:
    found = [p for p in problems if p.key == key]
    assert len(found) == 1, (key, [str(p) for p in problems])
    return found[0]


def assert_names(problem: ConfigError, path: Path, key: str, *fragments: str) -> None:
    """The problem names the file and the key (also in its one-line text) and says each fragment."""
    assert problem.file == str(path)
    assert problem.key == key
    text = str(problem)
    assert text.startswith(f"{path}: {key}: " if key else f"{path}: "), text
    assert "\n" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


# ------------------------------------------------------------------ parse_duration

@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5),
    (" 3s ", 3.0), (2, 2.0), (0.25, 0.25), (0, 0.0),
])
def test_parse_duration_accepts(text, seconds):
    assert parse_duration(text) == seconds
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("text", ["2x", "-1s", "s", "", "1 minute", "1e3s", "2", True, -1, -0.5,
                                  math.inf, math.nan])
def test_parse_duration_rejects_with_accepted_forms(text):
    with pytest.raises(ValueError) as info:
        parse_duration(text)
    message = str(info.value)
    assert repr(text) in message
    if isinstance(text, str) or isinstance(text, bool):
        assert '"500ms", "2s" or "1m"' in message


# ------------------------------------------------------------------ file-level problems

def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    problem = only(problems_of(path))
    assert_names(problem, path, "", "file not found", "config/demo.toml")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert info.value.exit_code == EXIT_CONFIG
    assert info.value.file == str(path)


def test_directory_instead_of_file(tmp_path):
    problem = only(problems_of(tmp_path))
    assert_names(problem, tmp_path, "", "cannot read the file")


def test_binary_file_is_a_problem_not_a_crash(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00not toml")
    problem = only(problems_of(path))
    assert_names(problem, path, "", "not a UTF-8 text file")


def test_toml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, """\
        [defaults]
        batch_size = 1000
        flush_interval = 1s
        """)
    problem = only(problems_of(path))
    assert_names(problem, path, "", "TOML syntax error", "line 3", "fix the line")


# ------------------------------------------------------------------ unknown keys

def test_unknown_top_level_key_suggests(tmp_path):
    path = write(tmp_path, 'state_dri = "x"\n' + LOCAL + """
        [shards.a]
        symbols = ["A"]
        """)
    assert_names(only(problems_of(path)), path, "state_dri", "unknown key", "did you mean 'state_dir'?")


def test_unknown_top_level_key_without_close_match_lists_allowed(tmp_path):
    path = write(tmp_path, 'pineapple = "blue"\n' + LOCAL + """
        [shards.a]
        symbols = ["A"]
        """)
    problem = only(problems_of(path))
    assert_names(problem, path, "pineapple", "unknown key", "allowed keys: " + ", ".join(TOP_KEYS))


def test_top_level_key_below_a_section_says_move_it(tmp_path):
    path = write(tmp_path, LOCAL + 'state_dir = "st"\n[shards.a]\nsymbols = ["A"]\n')
    assert_names(only(problems_of(path)), path, "source.state_dir", "unknown key", "top-level key",
                 "move it above the first [section]")


def test_top_level_section_typo_suggests(tmp_path):
    path = write(tmp_path, LOCAL + """
        [default]
        batch_size = 10
        [shards.a]
        symbols = ["A"]
        """)
    assert_names(only(problems_of(path)), path, "default", "did you mean 'defaults'?")


@pytest.mark.parametrize("section, key, suggestion", [
    ("defaults", "batch_sise", "batch_size"),
    ("defaults", "flush_intervall", "flush_interval"),
    ("source", "api_key_evn", "api_key_env"),
    ("database", "dns", "dsn"),
    ("tables", "tick", "ticks"),
    ("supervisor", "metric_port", "metrics_port"),
    ("feed", "rates", "rate"),
])
def test_unknown_key_in_section_suggests(tmp_path, section, key, suggestion):
    body = f"{key} = 1\n"
    text = LOCAL + (body if section == "source" else f"[{section}]\n{body}") + '[shards.a]\nsymbols = ["A"]\n'
    path = write(tmp_path, text)
    problem = only(problems_of(path))
    assert_names(problem, path, f"{section}.{key}", "unknown key", f"did you mean '{suggestion}'?")


def test_unknown_key_in_shard_suggests(tmp_path):
    path = write(tmp_path, LOCAL + """
        [shards.stocks]
        symbols = ["AAPL"]
        batch_sise = 10
        symbol = ["MSFT"]
        """)
    problems = problems_of(path)
    assert len(problems) == 2
    assert_names(by_key(problems, "shards.stocks.batch_sise"), path, "shards.stocks.batch_sise",
                 "did you mean 'batch_size'?")
    assert_names(by_key(problems, "shards.stocks.symbol"), path, "shards.stocks.symbol",
                 "did you mean 'symbols'?")


def test_section_that_is_not_a_table_is_reported_once(tmp_path):
    path = write(tmp_path, 'database = "postgresql://x"\n' + LOCAL + '[shards.a]\nsymbols = ["A"]\n')
    assert_names(only(problems_of(path)), path, "database", "must be a table ([database])", "got str")


# ------------------------------------------------------------------ shards and symbols

def test_missing_shards(tmp_path):
    path = write(tmp_path, LOCAL)
    assert_names(only(problems_of(path)), path, "shards", "missing", "[shards.NAME]", "symbols = [...]")


def test_empty_shards_table(tmp_path):
    path = write(tmp_path, LOCAL + "[shards]\n")
    assert_names(only(problems_of(path)), path, "shards", "at least one [shards.NAME]")


@pytest.mark.parametrize("body", ["", "symbols = []\n", 'symbols = "AAPL"\n'])
def test_shard_without_symbols(tmp_path, body):
    path = write(tmp_path, LOCAL + "[shards.stocks]\n" + body + '[shards.crypto]\nsymbols = ["BTC/USD"]\n')
    assert_names(only(problems_of(path)), path, "shards.stocks.symbols", "at least one symbol",
                 'symbols = ["BTC/USD"]')


@pytest.mark.parametrize("bad", ['""', "1", '"A,B"'])
def test_bad_symbol(tmp_path, bad):
    path = write(tmp_path, LOCAL + f'[shards.a]\nsymbols = ["OK", {bad}]\n')
    assert_names(only(problems_of(path)), path, "shards.a.symbols", "is not a symbol like")


def test_symbol_in_two_shards(tmp_path):
    path = write(tmp_path, LOCAL + """
        [shards.stocks]
        symbols = ["AAPL", "MSFT"]
        [shards.more]
        symbols = ["TSLA", "AAPL"]
        """)
    assert_names(only(problems_of(path)), path, "shards.more.symbols",
                 "'AAPL' is also in shards.stocks", "a symbol belongs to one shard")


def test_symbol_twice_in_one_shard(tmp_path):
    path = write(tmp_path, LOCAL + '[shards.crypto]\nsymbols = ["BTC/USD", "ETH/USD", "BTC/USD"]\n')
    assert_names(only(problems_of(path)), path, "shards.crypto.symbols",
                 "'BTC/USD' is twice in this shard", "a symbol belongs to one shard")


def test_bad_shard_name(tmp_path):
    path = write(tmp_path, LOCAL + '[shards."two words"]\nsymbols = ["A"]\n')
    assert_names(only(problems_of(path)), path, "shards.two words", "letters, digits, '-' and '_'")


# ------------------------------------------------------------------ API keys

def shards_toml(count: int, key_for=lambda i: None) -> str:
    out = ""
    for i in range(count):
        out += f'[shards.s{i}]\nsymbols = ["SYM{i}"]\n'
        if key_for(i):
            out += f'api_key_env = "{key_for(i)}"\n'
    return out


def test_more_than_three_shards_on_one_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    path = write(tmp_path, shards_toml(MAX_CONNECTIONS_PER_KEY + 1))
    problem = only(problems_of(path))
    assert_names(problem, path, "shards.s3.api_key_env", "4 shards (s0, s1, s2, s3)",
                 "$TWELVEDATA_API_KEY", "3 connections per key", "own api_key_env or merge shards")
    assert SECRET not in str(problem)


def test_more_than_three_shards_on_a_named_key(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_A", SECRET)
    path = write(tmp_path, LOCAL + shards_toml(5, lambda i: "KEY_A"))
    assert_names(only(problems_of(path)), path, "shards.s3.api_key_env", "5 shards", "$KEY_A")


def test_four_shards_on_two_keys_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_A", "a")
    monkeypatch.setenv("KEY_B", "b")
    path = write(tmp_path, shards_toml(4, lambda i: "KEY_A" if i < 2 else "KEY_B"))
    config, problems, warnings = check_config(path)
    assert problems == [] and warnings == []
    assert [s.api_key_env for s in config.shards.values()] == ["KEY_A", "KEY_A", "KEY_B", "KEY_B"]


def test_three_default_plus_one_own_key_is_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", "a")
    monkeypatch.setenv("TD_FOREX", "b")
    path = write(tmp_path, shards_toml(4, lambda i: "TD_FOREX" if i == 3 else None))
    config = load_config(path, require_env=True)
    assert config.shard("s3").api_key_env == "TD_FOREX"
    assert config.shard("s0").api_key_env == "TWELVEDATA_API_KEY"


def test_unset_key_is_a_warning_for_validate_and_an_error_for_start(tmp_path):
    path = write(tmp_path, shards_toml(2))
    config, problems, warnings = check_config(path)
    assert config is not None and problems == []
    assert_names(only(warnings), path, "source.api_key_env", "TWELVEDATA_API_KEY is not set",
                 "before `shardctl start`", "s0, s1")

    config, problems, warnings = check_config(path, require_env=True)
    assert config is None and warnings == []
    assert_names(only(problems), path, "source.api_key_env", "TWELVEDATA_API_KEY is not set")
    with pytest.raises(ConfigErrors) as info:
        load_config(path, require_env=True)
    assert "TWELVEDATA_API_KEY is not set" in str(info.value)
    assert load_config(path).shard("s0").symbols == ("SYM0",)  # without require_env it loads


def test_unset_shard_key_names_the_shard(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    path = write(tmp_path, shards_toml(2, lambda i: "TD_FOREX" if i == 1 else None))
    _, problems, warnings = check_config(path)
    assert problems == []
    assert_names(only(warnings), path, "shards.s1.api_key_env", "TD_FOREX is not set", "shard(s) s1")


def test_api_key_comes_from_env_and_is_never_in_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    path = write(tmp_path, shards_toml(MAX_CONNECTIONS_PER_KEY + 1) + "[defaults]\nbatch_size = 0\n")
    config, problems, warnings = check_config(path)
    assert len(problems) == 2
    assert all(SECRET not in str(p) for p in problems + warnings)
    path = write(tmp_path, shards_toml(1))
    config = load_config(path, require_env=True)
    assert config.api_key(config.shard("s0")) == SECRET
    assert SECRET not in repr(config)


def test_local_source_needs_no_key(tmp_path):
    path = write(tmp_path, LOCAL + shards_toml(2))
    config, problems, warnings = check_config(path, require_env=True)
    assert problems == [] and warnings == []
    assert config.source.is_local
    assert config.api_key(config.shard("s0")) == LOCAL_FEED_API_KEY == "demo"


def test_local_source_uses_a_real_key_when_set(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    config = load_config(write(tmp_path, LOCAL + shards_toml(1)))
    assert config.api_key(config.shard("s0")) == SECRET


def test_remote_source_without_key_has_no_key(tmp_path):
    config = load_config(write(tmp_path, shards_toml(1)))
    assert config.api_key(config.shard("s0")) is None


def test_api_key_in_source_url_is_rejected_without_echoing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", "x")
    path = write(tmp_path, f'[source]\nurl = "wss://ws.twelvedata.com/v1/quotes/price?apikey={SECRET}"\n'
                 + shards_toml(1))
    problem = only(problems_of(path))
    assert_names(problem, path, "source.url", "holds an API key", "$TWELVEDATA_API_KEY")
    assert SECRET not in str(problem)


def test_source_url_must_be_websocket(tmp_path):
    path = write(tmp_path, '[source]\nurl = "https://api.twelvedata.com"\n' + shards_toml(1))
    _, problems, _ = check_config(path)
    assert_names(only(problems), path, "source.url", "ws:// or wss://")


# ------------------------------------------------------------------ durations and batch size in a config

@pytest.mark.parametrize("value, fragment", [
    ('"2x"', "expected a duration like"),
    ('"-1s"', "expected a duration like"),
    ("-1", "cannot be negative"),
    ("0", "must be longer than zero"),
    ('"0s"', "must be longer than zero"),
    ("nan", "finite"),
    ("inf", "finite"),
    ("true", "expected a duration like"),
])
def test_bad_duration_in_defaults(tmp_path, value, fragment):
    path = write(tmp_path, LOCAL + f"[defaults]\nflush_interval = {value}\n" + shards_toml(1))
    assert_names(only(problems_of(path)), path, "defaults.flush_interval", fragment)


def test_drain_and_retention_may_be_zero_but_not_negative(tmp_path):
    path = write(tmp_path, LOCAL + '[defaults]\nstop_drain = "0s"\njournal_retain = 0\n' + shards_toml(1))
    settings = next(iter(load_config(path).shards.values())).settings
    assert (settings.stop_drain, settings.journal_retain) == (0.0, 0.0)
    path = write(tmp_path, LOCAL + '[defaults]\njournal_retain = -1\n' + shards_toml(1))
    assert_names(only(problems_of(path)), path, "defaults.journal_retain", "cannot be negative")


def test_bad_duration_in_shard_and_supervisor(tmp_path):
    path = write(tmp_path, LOCAL + '[supervisor]\nstop_timeout = "soon"\n'
                 + '[shards.a]\nsymbols = ["A"]\nwatchdog_timeout = "30 s ago"\n')
    problems = problems_of(path)
    assert len(problems) == 2
    assert_names(by_key(problems, "supervisor.stop_timeout"), path, "supervisor.stop_timeout", "'soon'")
    assert_names(by_key(problems, "shards.a.watchdog_timeout"), path, "shards.a.watchdog_timeout", "'30 s ago'")


def test_durations_parse_to_seconds(tmp_path):
    path = write(tmp_path, LOCAL + """
        [defaults]
        flush_interval = "500ms"
        heartbeat_interval = "2s"
        reconnect_max = "1m"
        bad_key_backoff = "1h"
        watchdog_timeout = 45
        stop_timeout = 2.5
        [supervisor]
        failure_window = "10m"
        [shards.a]
        symbols = ["A"]
        """)
    config = load_config(path)
    d = config.defaults
    assert (d.flush_interval, d.heartbeat_interval, d.reconnect_max, d.bad_key_backoff) == (0.5, 2.0, 60.0, 3600.0)
    assert (d.watchdog_timeout, d.stop_timeout) == (45.0, 2.5)
    assert config.supervisor.failure_window == 600.0


@pytest.mark.parametrize("value, fragment", [
    ("0", "must be at least 1, got 0"),
    ("-5", "must be at least 1, got -5"),
    ("1.5", "must be an integer, got 1.5"),
    ('"1000"', "must be an integer, got '1000'"),
    ("true", "must be an integer, got True"),
])
def test_bad_batch_size(tmp_path, value, fragment):
    path = write(tmp_path, LOCAL + f'[shards.a]\nsymbols = ["A"]\nbatch_size = {value}\n')
    assert_names(only(problems_of(path)), path, "shards.a.batch_size", fragment)


def test_reconnect_max_shorter_than_initial_reported_once_where_set(tmp_path):
    path = write(tmp_path, LOCAL + '[defaults]\nreconnect_initial = "2m"\n' + shards_toml(3))
    assert_names(only(problems_of(path)), path, "defaults.reconnect_max", "reconnect_initial")
    path = write(tmp_path, LOCAL + '[defaults]\nreconnect_initial = "10s"\n'
                 + '[shards.a]\nsymbols = ["A"]\nreconnect_max = "5s"\n[shards.b]\nsymbols = ["B"]\n')
    assert_names(only(problems_of(path)), path, "shards.a.reconnect_max", "reconnect_initial")


# ------------------------------------------------------------------ database and tables

def test_dsn_and_dsn_env_together(tmp_path):
    path = write(tmp_path, LOCAL + '[database]\ndsn = "postgresql://db/x"\ndsn_env = "SHARDCTL_DSN"\n'
                 + shards_toml(1))
    assert_names(only(problems_of(path)), path, "database", "either dsn or dsn_env, not both")


@pytest.mark.parametrize("dsn", ["postgresql://me:hunter2@db:5432/x", "host=db user=me password=hunter2"])
def test_dsn_with_password_warns_without_echoing_it(tmp_path, dsn):
    path = write(tmp_path, LOCAL + f'[database]\ndsn = "{dsn}"\n' + shards_toml(1))
    config, problems, warnings = check_config(path)
    assert problems == [] and config.database.dsn == dsn and not config.database.embedded
    warning = only(warnings)
    assert_names(warning, path, "database.dsn", "holds a password", "dsn_env", "~/.pgpass")
    assert "hunter2" not in str(warning)


def test_dsn_without_password_is_quiet(tmp_path):
    path = write(tmp_path, LOCAL + '[database]\ndsn = "postgresql://me@db:5432/x"\n' + shards_toml(1))
    assert check_config(path)[1:] == ([], [])


def test_dsn_env_unset_warns_then_errors(tmp_path, monkeypatch):
    path = write(tmp_path, LOCAL + '[database]\ndsn_env = "SHARDCTL_DSN"\n' + shards_toml(1))
    _, problems, warnings = check_config(path)
    assert problems == []
    assert_names(only(warnings), path, "database.dsn_env", "SHARDCTL_DSN is not set")
    assert_names(only(problems_of(path, require_env=True)), path, "database.dsn_env", "SHARDCTL_DSN is not set")
    monkeypatch.setenv("SHARDCTL_DSN", "postgresql://me:pw@db/x")
    assert load_config(path, require_env=True).database.dsn_env == "SHARDCTL_DSN"


def test_no_database_section_is_embedded(tmp_path):
    config = load_config(write(tmp_path, 'state_dir = "st"\n' + LOCAL + shards_toml(1)))
    assert config.database.embedded
    assert config.database.embedded_dir == (tmp_path / "st" / "postgres").resolve()


@pytest.mark.parametrize("name", ["crypto-ticks", "1ticks", "ticks; DROP TABLE x", "a" * 64, "tick s"])
def test_table_name_must_be_identifier(tmp_path, name):
    path = write(tmp_path, LOCAL + f'[tables]\nticks = "{name}"\n' + shards_toml(1))
    assert_names(only(problems_of(path)), path, "tables.ticks", "not a plain SQL identifier")


def test_table_names(tmp_path):
    config = load_config(write(tmp_path, LOCAL + '[tables]\nticks = "Ticks_2"\n' + shards_toml(1)))
    assert config.tables.ticks == "Ticks_2"
    assert config.tables.ledger == "shardctl_ledger"


# ------------------------------------------------------------------ defaults, overrides, lookups

def test_shard_overrides_inherit_from_defaults(tmp_path):
    path = write(tmp_path, LOCAL + """
        [defaults]
        batch_size = 500
        flush_interval = "2s"
        watchdog_timeout = "1m"
        [shards.stocks]
        symbols = ["AAPL"]
        batch_size = 100
        [shards.crypto]
        symbols = ["BTC/USD"]
        flush_interval = "250ms"
        """)
    config = load_config(path)
    stocks, crypto = config.shard("stocks").settings, config.shard("crypto").settings
    assert (stocks.batch_size, stocks.flush_interval, stocks.watchdog_timeout) == (100, 2.0, 60.0)
    assert (crypto.batch_size, crypto.flush_interval, crypto.watchdog_timeout) == (500, 0.25, 60.0)
    assert crypto.heartbeat_interval == ShardSettings().heartbeat_interval
    assert list(config.shards) == ["stocks", "crypto"]  # file order is kept


def test_unknown_shard_lists_known_ones(tmp_path):
    config = load_config(write(tmp_path, LOCAL + shards_toml(2)))
    with pytest.raises(ConfigError) as info:
        config.shard("nope")
    assert isinstance(info.value, ShardctlError) and info.value.exit_code == EXIT_CONFIG
    assert_names(info.value, config.path, "shards.nope", "no such shard", "known: s0, s1")


def test_config_is_frozen(tmp_path):
    config = load_config(write(tmp_path, LOCAL + shards_toml(1)))
    with pytest.raises(AttributeError):  # dataclasses.FrozenInstanceError
        config.state_dir = Path("/")  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.shards["x"] = config.shard("s0")  # type: ignore[index]


# ------------------------------------------------------------------ state_dir

def test_relative_state_dir_resolves_against_config_dir(tmp_path, monkeypatch):
    sub = tmp_path / "etc"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)  # not the config's directory
    config = load_config(write(sub, 'state_dir = "../state"\n' + LOCAL + shards_toml(1)))
    assert config.state_dir == (tmp_path / "state").resolve()
    assert config.shard_dir("s0") == config.state_dir / "shards" / "s0"
    assert config.supervisor.control_socket == config.state_dir / "run" / "control.sock"
    assert config.supervisor.pidfile == config.state_dir / "run" / "shardctl.pid"


def test_state_dir_env_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDCTL_STATE_DIR", str(tmp_path / "from-env"))
    config = load_config(write(tmp_path, 'state_dir = "from-file"\n' + LOCAL + shards_toml(1)))
    assert config.state_dir == tmp_path / "from-env"
    assert config.database.embedded_dir == tmp_path / "from-env" / "postgres"


def test_relative_state_dir_env_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SHARDCTL_STATE_DIR", "rel")
    config = load_config(write(tmp_path, LOCAL + shards_toml(1)))
    assert config.state_dir.is_absolute() and config.state_dir == (tmp_path / "rel").resolve()


def test_unset_state_dir_uses_user_data_dir(tmp_path):
    import platformdirs

    config = load_config(write(tmp_path, LOCAL + shards_toml(1)))
    assert config.state_dir == Path(platformdirs.user_data_dir("shardctl"))


def test_long_control_socket_path(tmp_path):
    path = write(tmp_path, f'state_dir = "/{"x" * 120}"\n' + LOCAL + shards_toml(1))
    config, problems, warnings = check_config(path)
    assert config is not None and not problems, "only the supervisor binds it: workers must still start"
    assert_names(only(warnings), path, "supervisor.control_socket", "unix sockets allow about 100")


# ------------------------------------------------------------------ feed and supervisor

def test_feed_defaults_to_every_shard_symbol(tmp_path):
    config = load_config(write(tmp_path, LOCAL + "[feed]\nrate = 5\n" + shards_toml(2)))
    assert config.feed is not None
    assert (config.feed.host, config.feed.port, config.feed.rate) == ("127.0.0.1", 8765, 5.0)
    assert config.feed.symbols == ("SYM0", "SYM1")


def test_no_feed_section_means_no_feed(tmp_path):
    assert load_config(write(tmp_path, LOCAL + shards_toml(1))).feed is None


@pytest.mark.parametrize("body, key, fragment", [
    ('host = "0.0.0.0"', "feed.host", "127.0.0.1 only"),
    ("port = 70000", "feed.port", "TCP port"),
    ("rate = 0", "feed.rate", "at least 0.001"),
    ('symbols = "BTC/USD"', "feed.symbols", "list of symbols"),
])
def test_bad_feed(tmp_path, body, key, fragment):
    path = write(tmp_path, LOCAL + f"[feed]\n{body}\n" + shards_toml(1))
    assert_names(only(problems_of(path)), path, key, fragment)


def test_feed_port_must_match_source_url(tmp_path):
    path = write(tmp_path, LOCAL + "[feed]\nport = 9999\n" + shards_toml(1))
    _, problems, warnings = check_config(path)
    assert problems == []
    assert_names(only(warnings), path, "feed.port", "9999", "8765", "make them the same")


def test_feed_with_remote_source_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", "x")
    path = write(tmp_path, "[feed]\n" + shards_toml(1))
    _, problems, warnings = check_config(path)
    assert problems == []
    assert_names(only(warnings), path, "feed", "ws.twelvedata.com", "remove [feed]")


@pytest.mark.parametrize("body, key, fragment", [
    ("metrics_port = 70000", "supervisor.metrics_port", "TCP port"),
    ("metrics_port = -1", "supervisor.metrics_port", "at least 0"),
    ("max_failures = 0", "supervisor.max_failures", "at least 1"),
    ('allowed_hosts = "shardctl.internal"', "supervisor.allowed_hosts", 'a list of host names, e.g. ["shardctl'),
    ('allowed_hosts = ["http://shardctl.internal"]', "supervisor.allowed_hosts",
     "'http://shardctl.internal' is not a host name or IP address"),
    ('allowed_hosts = ["shardctl.internal:9108"]', "supervisor.allowed_hosts", "no scheme, port or wildcard"),
    ('allowed_hosts = ["*.internal"]', "supervisor.allowed_hosts", "'*.internal' is not a host name"),
    ('allowed_hosts = ["ok.internal", ""]', "supervisor.allowed_hosts", "'' is not a host name"),
    ("allowed_hosts = [9108]", "supervisor.allowed_hosts", "9108 is not a host name"),
])
def test_bad_supervisor(tmp_path, body, key, fragment):
    path = write(tmp_path, LOCAL + f"[supervisor]\n{body}\n" + shards_toml(1))
    assert_names(only(problems_of(path)), path, key, fragment)


def test_allowed_hosts_are_bare_lower_case_names(tmp_path):
    path = write(tmp_path, LOCAL + "[supervisor]\n"
                 + 'allowed_hosts = ["Shardctl.Internal", "10.0.0.5", "[fd00::1]", "fd00::2", "pod-0.svc"]\n'
                 + shards_toml(1))
    config, problems, _ = check_config(path)
    assert problems == []
    assert config.supervisor.allowed_hosts == ("shardctl.internal", "10.0.0.5", "fd00::1", "fd00::2", "pod-0.svc")
    path = write(tmp_path, LOCAL + shards_toml(1))
    assert check_config(path)[0].supervisor.allowed_hosts == ()


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, "colour = 1\n" + LOCAL + """
        [defaults]
        batch_sise = 10
        flush_interval = "2x"
        [tables]
        ticks = "bad-name"
        [shards.a]
        symbols = ["A", "A"]
        [shards.b]
        symbols = []
        """)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    keys = [p.key for p in info.value.problems]
    assert sorted(keys) == sorted(["colour", "defaults.batch_sise", "defaults.flush_interval", "tables.ticks",
                                   "shards.a.symbols", "shards.b.symbols"])
    assert str(info.value).endswith("(and 5 more problems)")


# ------------------------------------------------------------------ the shipped configs

def test_demo_config_is_clean(monkeypatch):
    config, problems, warnings = check_config(DEMO, require_env=True)
    assert problems == [] and warnings == []
    assert config.source.is_local and config.source.url == "ws://127.0.0.1:8765/v1/quotes/price"
    assert config.feed is not None and config.feed.port == 8765 and config.feed.rate == 20
    assert config.database.embedded
    assert config.supervisor.metrics_port == 9108
    assert config.defaults.batch_size == 1000 and config.defaults.flush_interval == 1.0
    assert list(config.shards) == ["stocks", "crypto"]
    assert {"AAPL", "MSFT", "NVDA", "TSLA"} <= set(config.shard("stocks").symbols)
    assert {"BTC/USD", "ETH/USD", "SOL/USD"} <= set(config.shard("crypto").symbols)
    assert all(config.api_key(s) == "demo" for s in config.shards.values())
    assert set(config.feed.symbols) == {s for shard in config.shards.values() for s in shard.symbols}


def test_prod_config_is_valid(monkeypatch):
    config, problems, warnings = check_config(PROD)
    assert problems == []
    assert {w.key for w in warnings} == {"source.api_key_env", "database.dsn_env"}  # only the unset secrets
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    monkeypatch.setenv("SHARDCTL_DSN", "postgresql://u:p@db/x")
    config, problems, warnings = check_config(PROD, require_env=True)
    assert problems == [] and warnings == []
    assert config.source.url == "wss://ws.twelvedata.com/v1/quotes/price" and not config.source.is_local
    assert config.database.dsn_env == "SHARDCTL_DSN" and config.database.dsn is None
    assert config.feed is None
    assert {"stocks", "crypto"} <= set(config.shards)
    assert len(config.shards) <= MAX_CONNECTIONS_PER_KEY


def _commented_keys(path: Path) -> list[tuple[str, str]]:
    """(section, key) for every commented-out `# key = value` line, under the section it documents."""
    section, found = "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#?\s*\[([A-Za-z_.]+)\]\s*$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#\s*([a-z_]+)\s*=", line)
        if m:
            found.append((section, m.group(1)))
    return found


@pytest.mark.parametrize("path", [DEMO, PROD], ids=["demo", "prod"])
def test_commented_keys_in_shipped_configs_are_real_keys(path):
    """The examples double as the reference: a commented-out key must still be a key."""
    found = _commented_keys(path)
    assert found or path == PROD
    for section, key in found:
        if section.startswith("shards."):
            allowed = _SHARD_KEYS
        elif section:
            allowed = _SECTION_KEYS[section]
        else:
            allowed = TOP_KEYS
        assert key in allowed, (path.name, section, key)


def test_demo_documents_every_key():
    text = DEMO.read_text(encoding="utf-8")
    for section, keys in _SECTION_KEYS.items():
        for key in keys:
            assert re.search(rf"^#?\s*{key}\s*=", text, re.M), (section, key)
    assert re.search(r"^#?\s*state_dir\s*=", text, re.M)
