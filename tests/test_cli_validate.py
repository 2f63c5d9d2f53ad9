"""`shardctl validate`: a one-line summary (exit 0) or every problem (exit 2), never a traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shardctl.cli import cmd_validate
from shardctl.errors import EXIT_CONFIG, EXIT_OK

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "demo.toml"
PROD = REPO / "config" / "prod.toml"
SECRET = "sk-test-DO-NOT-PRINT-9b1c"
ENV_VARS = ("SHARDCTL_STATE_DIR", "TWELVEDATA_API_KEY", "SHARDCTL_DSN", "TD_FOREX")

GOOD = """\
    [source]
    url = "ws://127.0.0.1:8765/v1/quotes/price"
    [shards.stocks]
    symbols = ["AAPL", "MSFT"]
    [shards.crypto]
    symbols = ["BTC/USD", "ETH/USD", "SOL/USD"]
    """

BAD = """\
    pineapple = "blue"
    [database]
    dsn = "postgresql://me:hunter2@db/x"
    dsn_env = "SHARDCTL_DSN"
    [defaults]
    batch_sise = 10
    flush_interval = "2x"
    [tables]
    ticks = "crypto-ticks"
    [shards.stocks]
    symbols = ["AAPL", "AAPL"]
    [shards.crypto]
    symbols = []
    """


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cmd_validate(argparse.Namespace(config=str(path)))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(path: Path | str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    proc = subprocess.run([sys.executable, "-m", "shardctl", "validate", str(path)], capture_output=True,
                          text=True, env={**clean, **env}, cwd=REPO, timeout=60)
    if "ModuleNotFoundError" in proc.stderr and "shardctl." in proc.stderr:  # pragma: no cover
        pytest.fail("a module in shardctl.cli.COMMAND_MODULES is not importable yet:\n" + proc.stderr)
    return proc


# ------------------------------------------------------------------ in-process (fast, precise)

def test_good_config_prints_one_line_summary(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    code, out, err = validate(path, capsys)
    assert code == EXIT_OK
    assert err == ""
    assert out == (f"{path}: OK: 2 shard(s), 5 symbol(s): stocks (2), crypto (3); "
                   "source ws://127.0.0.1:8765/v1/quotes/price; embedded PostgreSQL\n")


def test_bad_config_lists_every_problem(tmp_path, capsys):
    path = write(tmp_path, BAD)
    code, out, err = validate(path, capsys)
    assert code == EXIT_CONFIG
    assert out == ""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    expected = [
        f"{path}: pineapple: unknown key; allowed keys:",
        f"{path}: defaults.batch_sise: unknown key; did you mean 'batch_size'?",
        f"{path}: database: set either dsn or dsn_env, not both",
        f"{path}: defaults.flush_interval: expected a duration like",
        f"{path}: tables.ticks: 'crypto-ticks' is not a plain SQL identifier",
        f"{path}: shards.stocks.symbols: 'AAPL' is twice in this shard",
        f"{path}: shards.crypto.symbols: a shard needs at least one symbol",
    ]
    for fragment in expected:
        assert sum(line.startswith("error: " + fragment) for line in errors) == 1, (fragment, err)
    assert len(errors) == len(expected)
    assert lines[-1] == f"{path}: {len(expected)} problem(s) found"
    # the password warning is still shown, without the password
    assert f"warning: {path}: database.dsn: holds a password" in err
    assert "hunter2" not in err


def test_missing_api_key_is_a_warning_and_exit_0(tmp_path, capsys):
    path = write(tmp_path, """\
        [shards.stocks]
        symbols = ["AAPL"]
        """)
    code, out, err = validate(path, capsys)
    assert code == EXIT_OK
    assert out.startswith(f"{path}: OK: 1 shard(s), 1 symbol(s)")
    assert err.startswith(f"warning: {path}: source.api_key_env: environment variable TWELVEDATA_API_KEY is not set")
    assert "error:" not in err


def test_api_key_value_is_never_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TWELVEDATA_API_KEY", SECRET)
    for text in ('[shards.stocks]\nsymbols = ["AAPL"]\n',
                 '[shards.stocks]\nsymbols = ["AAPL"]\nbatch_size = 0\n',
                 f'[source]\nurl = "wss://ws.twelvedata.com/v1/quotes/price?apikey={SECRET}"\n'
                 '[shards.stocks]\nsymbols = ["AAPL"]\n'):
        code, out, err = validate(write(tmp_path, text), capsys)
        assert SECRET not in out + err


def test_missing_file(tmp_path, capsys):
    code, out, err = validate(tmp_path / "nope.toml", capsys)
    assert code == EXIT_CONFIG
    assert err.startswith(f"error: {tmp_path / 'nope.toml'}: file not found")


# ------------------------------------------------------------------ end to end (real process)

def test_cli_good_config(tmp_path):
    path = write(tmp_path, GOOD)
    proc = run_cli(path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert proc.stdout.startswith(f"{path}: OK: 2 shard(s), 5 symbol(s): stocks (2), crypto (3);")
    assert "Traceback" not in proc.stderr


def test_cli_bad_config_exit_2_every_problem_no_traceback(tmp_path):
    path = write(tmp_path, BAD)
    proc = run_cli(path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error: ") == 7
    for key in ("pineapple", "defaults.batch_sise", "database", "defaults.flush_interval", "tables.ticks",
                "shards.stocks.symbols", "shards.crypto.symbols"):
        assert f"error: {path}: {key}: " in proc.stderr
    assert proc.stderr.rstrip().endswith("7 problem(s) found")


@pytest.mark.parametrize("text, fragment", [
    ("[defaults\nbatch_size = 1\n", "TOML syntax error"),
    (None, "file not found"),
    (b"\xff\xfe\x00", "not a UTF-8 text file"),
])
def test_cli_unreadable_config_no_traceback(tmp_path, text, fragment):
    path = tmp_path / "c.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    proc = run_cli(path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {path}: {fragment}")


def test_cli_warning_for_unset_key_exit_0(tmp_path):
    path = write(tmp_path, '[shards.stocks]\nsymbols = ["AAPL"]\n')
    proc = run_cli(path)
    assert proc.returncode == 0
    assert proc.stderr.startswith("warning: ")
    assert "TWELVEDATA_API_KEY is not set" in proc.stderr
    proc = run_cli(path, TWELVEDATA_API_KEY=SECRET)
    assert proc.returncode == 0 and proc.stderr == ""
    assert SECRET not in proc.stdout


def test_cli_shipped_demo_is_clean():
    proc = run_cli("config/demo.toml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("config/demo.toml: OK: 2 shard(s),")
    assert "embedded PostgreSQL" in proc.stdout


def test_cli_shipped_prod_is_valid():
    proc = run_cli("config/prod.toml")
    assert proc.returncode == 0, proc.stderr
    assert "error:" not in proc.stderr
    assert proc.stdout.startswith("config/prod.toml: OK:") and "configured database" in proc.stdout
    proc = run_cli("config/prod.toml", TWELVEDATA_API_KEY=SECRET, SHARDCTL_DSN="postgresql://u:pw@db/x")
    assert proc.returncode == 0 and proc.stderr == ""
    assert SECRET not in proc.stdout and "pw@" not in proc.stdout


def test_a_journal_cap_larger_than_the_free_disk_is_warned_about(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    config = write(tmp_path, f"""\
        state_dir = "{tmp_path / 'state'}"
        [source]
        url = "ws://127.0.0.1:8765/v1/quotes/price"
        [defaults]
        journal_max_bytes = {free * 2}
        [shards.crypto]
        symbols = ["BTC/USD"]
        """)
    result = subprocess.run([sys.executable, "-m", "shardctl", "validate", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == EXIT_OK, result.stderr
    warning = next(line for line in result.stderr.splitlines() if "journal_max_bytes" in line)
    assert warning.startswith(f"warning: {config}: journal_max_bytes: the journal cap of crypto ({free * 2:,} bytes)")
    assert str(tmp_path) in warning and "lower journal_max_bytes or give the state directory more space" in warning


def test_a_journal_cap_that_fits_is_not_warned_about(tmp_path: Path) -> None:
    config = write(tmp_path, GOOD + '    [defaults]\n    journal_segment_bytes = "1MiB"\n'
                   '    journal_max_bytes = "2MiB"\n')
    result = subprocess.run([sys.executable, "-m", "shardctl", "validate", str(config)],
                            capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                           "SHARDCTL_STATE_DIR": str(tmp_path)})
    assert "journal_max_bytes" not in result.stderr
