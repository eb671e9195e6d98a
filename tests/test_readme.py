"""The README's commands, run as printed: a new user copies them, so each must work from a fresh
clone. Its command blocks are read from README.md itself; a block added there is run here.

- Server-free commands (`fabriek simulate`, `fabriek plan`) each state their time on 2 cores;
  those stated at a minute or less run here, the longer ones in benchmarks/readme_examples.py
  (which measures them all: BENCHMARKS.md). Tests do not time: the benchmark does.
- The blocks of a running server (a job's workflow, tenants, the facility) run in order against
  a real `fabriek up`, each line through bash as a user's shell runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import FABRIEK, ServerProcess, start_server

REPO = Path(__file__).resolve().parents[1]
STATED = re.compile(r"#.*?\b(\d+(?:\.\d+)?) (s|min) on 2 cores")
RUN_HERE_UP_TO_S = 30
PLACEHOLDER = re.compile(r"\b(ID|HOST|FILE|DIR|NAME)\b(?!=)")


def blocks() -> list[tuple[str, list[str]]]:
    """Each shell block of the README (no language, sh or bash): the heading it is under, and its
    command lines, continuation lines joined."""
    found, heading = [], ""
    lines = iter((REPO / "README.md").read_text().splitlines())
    for line in lines:
        if line.startswith("#"):
            heading = line.lstrip("# ")
        elif line.startswith("```"):
            body = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            if line[3:].strip() not in ("", "sh", "bash"):
                continue  # toml, python: not for a shell
            text = "\n".join(body).replace("\\\n", " ")
            commands = [c.strip() for c in text.splitlines() if c.strip() and not c.startswith("#")]
            found.append((heading, commands))
    return found


def offline_commands() -> list[tuple[str, float]]:
    """`fabriek simulate` and `fabriek plan` lines with their stated seconds."""
    found = []
    for _, commands in blocks():
        for command in commands:
            if command.startswith(("fabriek simulate", "fabriek plan")):
                stated = STATED.search(command)
                assert stated, f"the README states no time on 2 cores for: {command}"
                seconds = float(stated.group(1)) * (60 if stated.group(2) == "min" else 1)
                found.append((command, seconds))
    return found


def run(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert r.returncode == 0, (
        f"{command}\nexit {r.returncode}\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r.stdout


def test_the_readme_states_a_time_for_each_offline_command_and_some_are_long() -> None:
    commands = offline_commands()
    assert len(commands) >= 5
    assert any(s > RUN_HERE_UP_TO_S for _, s in commands)  # the split below is not vacuous
    assert any(s <= RUN_HERE_UP_TO_S for _, s in commands)


@pytest.mark.parametrize(
    "command", [c for c, s in offline_commands() if s <= RUN_HERE_UP_TO_S], ids=lambda c: c[:60]
)
def test_an_offline_command_of_the_readme_runs_as_printed(command: str, tmp_path: Path) -> None:
    out = run(command, tmp_path, env=_path_env())
    assert "POLICY" in out or "NODES" in out, out  # a comparison's or a plan's table
    for written in re.findall(r"--(?:json|report) (\S+)", command):
        assert (tmp_path / written).stat().st_size > 1000


# The blocks that need a running server, by the heading they are under, run in this order; the
# Slurm block needs a Slurm cluster (tests/backends/slurm run its like). A new block with fabriek
# commands must be named here or be all simulate/plan: the test says so.
SERVER_BLOCKS = ("Run a job", "Tenants, users and tokens", "Energy, water and carbon")
ELSEWHERE = {"On Slurm": "a Slurm cluster: tests/backends/slurm"}
# Lines with a value for the user to fill in, left out of the runs (and no others).
FILLED_IN_BY_THE_USER = {"fabriek token revoke ID"}


@pytest.fixture
def readme_server(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_server(tmp_path / "home")
    yield server
    server.stop()


def test_the_server_blocks_of_the_readme_run_in_order(
    readme_server: ServerProcess, tmp_path: Path
) -> None:
    """Each block that needs a server, as one shell script (a variable set on one line is used on
    the next), in the README's order, from a directory holding the examples as a fresh clone
    does, as the operator that `fabriek up` made on its first start. Lines with a placeholder
    for the user to fill in (`token revoke ID`) and the virtualenv's activation are left out."""
    work = tmp_path / "clone"
    shutil.copytree(REPO / "examples", work / "examples")
    seen = []
    for heading, commands in blocks():
        if not any(c.startswith("fabriek ") for c in commands):
            continue
        if all(c.startswith(("fabriek simulate", "fabriek plan")) for c in commands):
            continue
        assert heading in SERVER_BLOCKS or heading in ELSEWHERE, f"unclassified block: {heading}"
        if heading in ELSEWHERE:
            continue
        script = [c for c in commands if not PLACEHOLDER.search(c) and not c.startswith(". ")]
        left_out = [c for c in commands if PLACEHOLDER.search(c)]
        assert set(left_out) <= FILLED_IN_BY_THE_USER, left_out  # none left out unawares
        run("set -eux\n" + "\n".join(script), work, env=readme_server.env, timeout=300)
        seen.append(heading)
    assert seen == list(SERVER_BLOCKS)
    assert (work / "out" / "metrics.json").is_file(), sorted(work.rglob("*"))


def _path_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(FABRIEK).parent}:{os.environ.get('PATH', '')}"}
