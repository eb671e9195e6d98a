"""What a tenant's job writes reaches another person's terminal with its control characters
visible: `fabriek download`, `logs` (and `--follow`, `submit --wait`), `jobs` and `status`,
through the real CLI against a real server (issue 21, item 9)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import FABRIEK, ServerProcess, wait_for

FILE = "\x1b]0;pwned\x07evil"  # OSC 0: would retitle the window of whoever lists it
# The job's own Python writes these, so that the command line holds only plain text.
JOB = """
import os
out = os.environ["FABRIEK_OUTPUT_DIR"]
open(os.path.join(out, "\\x1b]0;pwned\\x07evil"), "w").write("x")
print("before\\x1b[2Jafter \\u202eevil", flush=True)
print("\\x1b[32mgreen\\x1b[0m")
"""
LOG = "before\x1b[2Jafter \u202eevil\n\x1b[32mgreen\x1b[0m\n"
SHOWN = "before\\x1b[2Jafter \\u202eevil\n\\x1b[32mgreen\\x1b[0m\n"
HIDDEN = (b"\x1b", "\u202e".encode(), b"\x07")


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI's output as bytes, as a terminal would get them."""
    return subprocess.run([FABRIEK, *args], env=server.env, capture_output=True, timeout=60)


def assert_safe(out: bytes) -> None:
    for raw in HIDDEN:
        assert raw not in out, out


@pytest.fixture(scope="module")
def job_id(server: ServerProcess) -> str:
    """A finished job that wrote a file named with an OSC sequence and logged ESC and U+202E;
    its command line holds a real ESC too."""
    r = server.cli(
        "submit", "--parsable", "--no-workdir", "--name", "pwn", "--",
        "python", "-c", JOB, "\x1b[2J",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip()

    def state() -> str:
        return str(json.loads(server.cli("status", job, "--json").stdout)["state"])

    assert wait_for(lambda: state() in ("succeeded", "failed"), what="the job to end") and (
        state() == "succeeded"
    ), server.cli("logs", job, "--stderr").stdout
    return job


def test_download_lists_a_hostile_file_name_visibly(
    server: ServerProcess, job_id: str, tmp_path: Path
) -> None:
    r = cli(server, "download", job_id, str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert_safe(r.stdout + r.stderr)
    assert b"  \\x1b]0;pwned\\x07evil\n" in r.stdout
    assert (tmp_path / "out" / FILE).read_text() == "x"  # the file itself keeps its name


def test_logs_show_control_sequences_visibly_and_raw_passes_them(
    server: ServerProcess, job_id: str
) -> None:
    for args in ([], ["--follow"], ["--tail", "2"]):
        r = cli(server, "logs", job_id, *args)
        assert r.returncode == 0, r.stderr
        assert_safe(r.stdout + r.stderr)
        assert r.stdout == SHOWN.encode(), args
    for args in (["--raw"], ["--raw", "--follow"]):
        r = cli(server, "logs", job_id, *args)
        assert r.returncode == 0 and r.stdout == LOG.encode(), args


def test_submit_wait_streams_the_output_visibly_unless_raw(server: ServerProcess) -> None:
    for raw, expected in ((False, SHOWN), (True, LOG)):
        args = ["submit", "--wait", "--no-workdir", *(["--raw"] if raw else [])]
        r = cli(server, *args, "--", "python", "-c", JOB)
        assert r.returncode == 0, r.stderr
        assert r.stdout == expected.encode()


def test_status_and_jobs_show_a_command_and_an_older_name_visibly(
    server: ServerProcess, job_id: str
) -> None:
    status = cli(server, "status", job_id)
    assert status.returncode == 0, status.stderr
    assert_safe(status.stdout)
    assert b"\\x1b[2J" in status.stdout  # the command's last argument
    # A job stored before names had a rule, as one tenant named it.
    with sqlite3.connect(server.home / "fabriek.db") as db:
        db.execute("UPDATE jobs SET name = ? WHERE id = ?", (f"old{FILE}\u202e", int(job_id)))
    for args in (["jobs"], ["jobs", "--name", "old*"], ["status", job_id]):
        r = cli(server, *args)
        assert r.returncode == 0, r.stderr
        assert_safe(r.stdout)
        assert b"old\\x1b]0;pwned\\x07evil\\u202e" in r.stdout, args
    # --json is the exact text, every character beyond ASCII as an escape.
    r = cli(server, "jobs", "--json", "--name", "old*")
    assert r.stdout.isascii() and b"\\u001b]0;pwned\\u0007evil\\u202e" in r.stdout
    assert json.loads(r.stdout)[0]["name"] == f"old{FILE}\u202e"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("a\x9b2J", "U+009B, a control character"),
        ("evil\u202egpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE), a format character"),
        ("zero\u200bwidth", "U+200B (ZERO WIDTH SPACE), a format character"),
        ("del\x7f", "U+007F, a control character"),
        ("line\u2028sep", "U+2028 (LINE SEPARATOR), a line separator"),
        ("\x1b[2J", "U+001B, a control character"),
    ],
)
def test_submit_with_a_hidden_character_in_the_name_is_refused_clearly(
    server: ServerProcess, name: str, says: str
) -> None:
    r = cli(server, "submit", "--no-workdir", "--name", name, "--", "true")
    assert r.returncode == 2
    assert_safe(r.stderr)
    assert r.stderr.decode().startswith(f"error: the job name holds {says}")
    assert "a job name is 1 to 128 characters that each show as themselves" in r.stderr.decode()
