"""The README's install lines (section "Install", Debian/Ubuntu), as written there, in a fresh container of the
python:3.11-slim kind: no compiler, no PostgreSQL headers. First what happens without the prerequisite (pip
stops at psycopg2, naming pg_config), then the README's lines, then shardctl runs and the environment holds
one psycopg2 distribution. ``pip install shardctl`` becomes ``pip install .`` of this checkout (the README's
"from a clone" form): this version is not on a package index. Skipped where podman or the base is missing."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
from podkit import BASE_IMAGE, REPO, RUN_LIMITS, podman, unavailable

#: apt and pip in a fresh container, psycopg2 compiled: one to two minutes on a busy machine.
pytestmark = [pytest.mark.skipif(bool(unavailable()), reason=unavailable() or ""), pytest.mark.timeout(600)]

#: What `pip install .` reads (deploy/docker/Dockerfile.dockerignore lets in the same).
SOURCES = ("pyproject.toml", "README.md", "shardctl", "sql", "config")
#: Downloads kept between runs like the image layers (podman volumes): pip's (its built wheels are emptied
#: before every run: psycopg2 is compiled each time, as on a fresh machine) and apt's packages.
CACHES = {"shardctl-test-pip-cache": "/root/.cache/pip", "shardctl-test-apt-archives": "/var/cache/apt/archives"}


def readme_install_lines() -> list[str]:
    """The shell lines of the README's "Install" section's first sh block (comments dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "no ```sh block in the README's Install section"
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def as_root_from_this_checkout(line: str) -> str:
    """A README line as the test runs it: root needs no sudo; shardctl comes from this checkout."""
    return line.replace("sudo ", "").replace("pip install shardctl", "pip install .")


@pytest.mark.slow
def test_the_readme_install_lines_work_in_a_fresh_container_and_name_their_one_prerequisite(tmp_path: Path) -> None:
    lines = readme_install_lines()
    assert any("apt-get install" in line for line in lines) and any("pip install" in line for line in lines), lines
    source = tmp_path / "shardctl.tar"
    with tarfile.open(source, "w") as tar:
        for name in SOURCES:
            tar.add(REPO / name, arcname=name, filter=lambda info: None if "__pycache__" in info.name else info)
    steps = "\n".join(f"echo \"STEP $(( $(date +%s) - started ))s: {line}\"\n{as_root_from_this_checkout(line)}"
                      for line in lines)
    script = f"""set -eu
rm -rf /root/.cache/pip/wheels
mkdir /root/shardctl && cd /root/shardctl && tar -xf /shardctl.tar
for tool in gcc cc pg_config; do if command -v $tool; then echo "not fresh: $tool"; exit 3; fi; done
python3 -m venv /tmp/without
started=$(date +%s)
if /tmp/without/bin/pip install . > /tmp/without.log 2>&1; then echo "installed without"; exit 4; fi
echo "WITHOUT: $(( $(date +%s) - started ))s: $(grep -m1 -o 'pg_config executable not found' /tmp/without.log || \
  tail -5 /tmp/without.log)"
started=$(date +%s)
{steps}
echo "WITH: $(( $(date +%s) - started ))s"
.venv/bin/shardctl demo --print-config > /dev/null
.venv/bin/python -c 'import json, importlib.metadata as m, pgcopy, psycopg2
print("DISTS", json.dumps(sorted(d.metadata["Name"] for d in m.distributions()
                                 if d.metadata["Name"].lower().startswith("psycopg2"))))'
"""
    (tmp_path / "install.sh").write_text(script)
    caches = [f"--volume={volume}:{path}" for volume, path in CACHES.items()]
    done = podman("run", "--rm", "--network", "host", *RUN_LIMITS, *caches, "-v", f"{source}:/shardctl.tar:ro",
                  "-v", f"{tmp_path / 'install.sh'}:/install.sh:ro", BASE_IMAGE, "bash", "/install.sh",
                  timeout=900, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    without = re.search(r"^WITHOUT: (\d+)s: (.*)$", out, re.M)
    assert without and without.group(2) == "pg_config executable not found", out[-4000:]
    dists = json.loads(re.search(r"^DISTS (.*)$", out, re.M).group(1))  # type: ignore[union-attr]
    with_time = re.search(r"^WITH: (\d+)s$", out, re.M)
    step_times = "; ".join(re.findall(r"^STEP (\d+s): ", out, re.M))
    print(f"\n[install] without the prerequisite: pip stops after {without.group(1)}s ({without.group(2)}); "
          f"with the README's lines: {with_time.group(1) if with_time else '?'}s "
          f"(steps began at {step_times}); psycopg2 distributions: {dists}")
    assert dists == ["psycopg2"]
