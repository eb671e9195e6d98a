"""cli/jobs.py and cli/config.py against a real server: the job commands as a user types them."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fabriek.client.client import Client
from tests.helpers import FABRIEK, ServerProcess, wait_for


def state_of(server: ServerProcess, job_id: int | str) -> str:
    return str(json.loads(server.cli("status", str(job_id), "--json").stdout)["state"])


def make_member(server: ServerProcess, name: str, *projects: str) -> dict[str, str]:
    """A user in an organisation of their own and in `projects`; the environment they run in."""
    made = server.cli("user", "create", name)
    assert made.returncode == 0, made.stderr
    org = f"{name}-org"
    steps = [
        ("org", "create", org, "--display-name", org, "--kind", "university"),
        ("org", "add-member", org, name),
    ]
    for project in projects:
        steps += [("project", "create", project, "--org", org)]
        steps += [("project", "add-member", project, name)]
    for step in steps:
        r = server.cli(*step)
        assert r.returncode == 0, (step, r.stderr)
    env = dict(server.env, FABRIEK_URL=server.url, FABRIEK_TOKEN=made.stdout.strip())
    env["FABRIEK_CONFIG"] = str(server.home.parent / f"{name}.json")
    return env


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FABRIEK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_a_user_of_one_project_submits_without_naming_it(server: ServerProcess) -> None:
    vera = make_member(server, "vera", "vision")
    r = run(vera, "submit", "--json", "--no-workdir", "--", "true")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["project"] == "vision"
    # A second project: the error names both and the ways out.
    assert server.cli("project", "create", "nlp", "--org", "vera-org").returncode == 0
    assert server.cli("project", "add-member", "nlp", "vera").returncode == 0
    r = run(vera, "submit", "--no-workdir", "--", "true")
    assert r.returncode == 2 and "several projects (nlp, vision)" in r.stderr, r.stderr
    assert "--project NAME" in r.stderr and "fabriek config set project" in r.stderr
    # A personal default in the client config.
    r = run(vera, "config", "set", "project", "elsewhere")
    assert r.returncode == 2 and "yours: nlp, vision" in r.stderr
    assert run(vera, "config", "set", "project", "nlp").returncode == 0
    assert json.loads(Path(vera["FABRIEK_CONFIG"]).read_text())["project"] == "nlp"
    assert "nlp" in run(vera, "config", "show").stdout
    r = run(vera, "submit", "--json", "--no-workdir", "--", "true")
    assert json.loads(r.stdout)["project"] == "nlp", r.stderr
    r = run(vera, "submit", "--json", "--no-workdir", "--project", "vision", "--", "true")
    assert json.loads(r.stdout)["project"] == "vision", r.stderr
    assert run(vera, "config", "unset", "project").returncode == 0
    assert run(vera, "submit", "--no-workdir", "--", "true").returncode == 2
    r = run(vera, "config", "set", "colour", "blue")
    assert r.returncode == 2 and "no setting 'colour'" in r.stderr


def test_links_in_the_workdir_and_virtualenvs(server: ServerProcess, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("a,b\n")
    (root / "latest.csv").symlink_to("data/train.csv")
    (root / "datasets").symlink_to("/usr/share")
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").write_text("#")
    script = "cat latest.csv; readlink latest.csv; ls -A"
    r = server.cli("submit", "--wait", "--", "sh", "-c", script, cwd=root)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: left out 1 symbolic link pointing outside the workdir: datasets"]
    assert r.stdout.splitlines() == ["a,b", "data/train.csv", "data", "latest.csv"]


def test_logs_keep_stdout_and_stderr_apart_with_tail_and_since(server: ServerProcess) -> None:
    script = "for i in 1 2 3 4 5; do echo out $i; done; echo oops >&2; sleep 1.5; echo late"
    r = server.cli("submit", "--wait", "--no-workdir", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "out 1\nout 2\nout 3\nout 4\nout 5\nlate\n"  # --wait: each to its own
    assert "oops" in r.stderr and "oops" not in r.stdout
    job_id = json.loads(server.cli("jobs", "--json", "--limit", "1").stdout)[0]["id"]
    logs = server.cli("logs", str(job_id))
    assert logs.stdout == "out 1\nout 2\nout 3\nout 4\nout 5\nlate\n"
    assert f"also wrote to stderr: `fabriek logs {job_id} --stderr`" in logs.stderr
    assert server.cli("logs", str(job_id), "--stderr").stdout == "oops\n"
    assert server.cli("logs", str(job_id), "--tail", "2").stdout == "out 5\nlate\n"
    assert server.cli("logs", str(job_id), "-n", "0").stdout == ""
    follow = server.cli("logs", str(job_id), "--follow", "--tail", "1")
    assert follow.stdout == "late\n"
    with server.http() as http:
        started = http.get(f"/jobs/{job_id}").json()["started_at"]
    after_burst = datetime.fromisoformat(started) + timedelta(seconds=1)
    since = server.cli("logs", str(job_id), "--since", after_burst.isoformat())
    assert since.stdout == "late\n", since.stderr
    assert server.cli("logs", str(job_id), "--since", "1d").stdout.startswith("out 1\n")
    bad = server.cli("logs", str(job_id), "--since", "yesterday")
    assert bad.returncode == 2 and "--since takes a duration" in bad.stderr


def test_jobs_filters_and_their_api(server: ServerProcess) -> None:
    before = datetime.now(UTC)
    for name in ("filter-alpha", "filter-beta"):
        assert server.cli("submit", "--no-workdir", "--name", name, "--", "true").returncode == 0
    names = lambda *args: [  # noqa: E731
        j["name"] for j in json.loads(server.cli("jobs", "--json", *args).stdout)
    ]
    assert names("--name", "filter-*") == ["filter-beta", "filter-alpha"]
    assert names("--name", "filter-alpha") == ["filter-alpha"]
    assert names("--name", "filter_alpha") == []  # `_` is no wildcard
    assert names("--name", "filter-*", "--project", "nowhere") == []
    me = json.loads(server.cli("jobs", "--json", "--limit", "1").stdout)[0]["user"]
    assert names("--name", "filter-*", "--user", me) == ["filter-beta", "filter-alpha"]
    assert names("--name", "filter-*", "--user", "somebody-else") == []
    assert names("--name", "filter-*", "--project", "default") == ["filter-beta", "filter-alpha"]
    assert names("--name", "filter-*", "--since", before.isoformat()) == [
        "filter-beta",
        "filter-alpha",
    ]
    assert names("--name", "filter-*", "--until", before.isoformat()) == []
    assert names("--name", "filter-*", "--since", "1h") == ["filter-beta", "filter-alpha"]
    with server.http() as http:
        r = http.get(
            "/jobs", params={"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00Z"}
        )
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
        assert "time range is empty" in r.json()["error"]["message"]
        r = http.get("/jobs", params={"since": "soon"})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
        # Times no UTC clock can show (were 500s, found in review)
        for moment in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
            for key in ("since", "until"):
                r = http.get("/jobs", params={key: moment})
                assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_request")
    for flag, text in (("--since", "3000000d"), ("--until", "99999999999d")):
        r = server.cli("jobs", flag, text)
        assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr
        assert "Traceback" not in r.stderr


def test_download_of_a_running_job_says_the_outputs_are_partial(
    server: ServerProcess, tmp_path: Path
) -> None:
    script = "echo part > $FABRIEK_OUTPUT_DIR/a.txt; sleep 60"
    job_id = server.cli("submit", "--parsable", "--no-workdir", "--", "sh", "-c", script).stdout
    wait_for(lambda: state_of(server, job_id.strip()) == "running", what="running")
    wait_for(lambda: server.cli("download", job_id.strip(), str(tmp_path / "o")).returncode == 0)
    r = server.cli("download", job_id.strip(), str(tmp_path / "o"))
    assert "job " + job_id.strip() + " is running: these outputs are partial" in r.stderr
    assert server.cli("cancel", job_id.strip()).returncode == 0
    wait_for(lambda: state_of(server, job_id.strip()) == "cancelled", what="cancelled")
    r = server.cli("download", job_id.strip(), str(tmp_path / "o2"))
    assert r.returncode == 0 and "partial" not in r.stderr


def test_the_sdk_takes_sizes_and_durations_as_the_cli_does(server: ServerProcess) -> None:
    with Client(server.url, server.token) as client:
        job = client.submit(["true"], memory="512M", time="10m")
        assert (job.resources.memory_bytes, job.time_limit_s) == (512 * 2**20, 600)
        job = client.submit(["true"], memory_bytes=2**30, time_limit_s=90)
        assert (job.resources.memory_bytes, job.time_limit_s) == (2**30, 90)
        assert client.submit(["true"]).resources.memory_bytes == 2 * 2**30  # the server's default
        with pytest.raises(Exception, match="cannot read memory size"):
            client.submit(["true"], memory="lots")


def start_waiting(
    server: ServerProcess, err: Path, *extra: str
) -> tuple[subprocess.Popen[str], int]:
    """`fabriek submit --wait` of a long job, as a process to interrupt (its stderr into the file
    `err`), and the job's id once it runs."""
    proc = subprocess.Popen(
        [FABRIEK, "submit", "--wait", "--no-workdir", *extra, "--", "sleep", "60"],
        env=server.env,
        stdout=subprocess.DEVNULL,
        stderr=err.open("w"),
        text=True,
    )
    line = wait_for(lambda: err.read_text().partition("\n")[0], what="the job's id")
    assert line.startswith("submitted job "), line
    job_id = int(line.split()[2])
    wait_for(lambda: state_of(server, job_id) == "running", what=f"job {job_id} running")
    time.sleep(0.3)  # into the follow loop
    return proc, job_id


def test_ctrl_c_leaves_the_job_running_and_says_how_to_stop_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    proc, job_id = start_waiting(server, tmp_path / "err")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    err = (tmp_path / "err").read_text()
    assert f"job {job_id} keeps running; `fabriek cancel {job_id}` stops it" in err
    assert "Traceback" not in err and state_of(server, job_id) == "running"
    assert server.cli("cancel", str(job_id)).returncode == 0


@pytest.mark.parametrize("how", ["twice", "--cancel-on-interrupt"])
def test_a_second_ctrl_c_or_the_flag_cancels_the_job(
    server: ServerProcess, tmp_path: Path, how: str
) -> None:
    err = tmp_path / "err"
    proc, job_id = start_waiting(server, err, *([how] if how.startswith("--") else []))
    proc.send_signal(signal.SIGINT)
    if how == "twice":
        wait_for(lambda: "keeps running" in err.read_text(), what="the first answer")
        proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert f"job {job_id} is being cancelled" in err.read_text()
    wait_for(lambda: state_of(server, job_id) == "cancelled", what=f"job {job_id} cancelled")
