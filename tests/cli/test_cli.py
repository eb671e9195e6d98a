"""The `fabriek` command line against a real server, as a user types it."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fabriek.server.db.migrate import head_revision
from tests.helpers import FABRIEK, ServerProcess, free_port, server_env, wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small project directory with things to upload and things to leave out."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "main.py").write_text("import os\nprint('files:', sorted(os.listdir('.')))\n")
    (root / "data" / "keep.txt").write_text("keep")
    (root / "data" / "cache.tmp").write_text("skip")
    (root / "secret.env").write_text("TOKEN=x")
    (root / ".gitignore").write_text("*.tmp\n")
    (root / ".fabriekignore").write_text("secret.env\n")
    return root


def test_submit_parsable_wait_and_exit_code(server: ServerProcess, project: Path) -> None:
    r = server.cli(
        "submit",
        "--parsable",
        "--cpus",
        "1",
        "--mem",
        "512M",
        "--time",
        "1m",
        "--",
        "python",
        "main.py",
        cwd=project,
    )
    assert r.returncode == 0, r.stderr
    job_id = int(r.stdout.strip())
    waited = server.cli(
        "submit", "--wait", "--time", "1m", "--", "sh", "-c", "echo bye; exit 4", cwd=project
    )
    assert waited.returncode == 4 and "bye" in waited.stdout and "failed" in waited.stderr
    status = json.loads(server.cli("status", str(job_id), "--json").stdout)
    wait_for(
        lambda: (
            json.loads(server.cli("status", str(job_id), "--json").stdout)["state"] == "succeeded"
        )
    )
    logs = server.cli("logs", str(job_id)).stdout
    assert "'data', 'main.py'" in logs  # .gitignore'd and .fabriekignore'd files were left out
    assert "secret.env" not in logs and status["resources"]["memory_bytes"] == 512 * 2**20


def test_jobs_status_logs_follow_cancel_download(
    server: ServerProcess, project: Path, tmp_path: Path
) -> None:
    script = "for i in 1 2 3; do echo tick $i; sleep 0.3; done; echo result > $FABRIEK_OUTPUT_DIR/out.txt"
    job_id = server.cli(
        "submit", "--parsable", "--name", "ticker", "--", "sh", "-c", script, cwd=project
    ).stdout.strip()
    follow = server.cli("logs", job_id, "--follow")
    assert follow.returncode == 0 and follow.stdout == "tick 1\ntick 2\ntick 3\n"
    table = server.cli("jobs").stdout
    assert "ticker" in table and "succeeded" in table and "default" in table
    status = server.cli("status", job_id).stdout
    assert "succeeded" in status and "history" in status and "wall" in status
    # No RAPL on this machine: the CPU's energy is an estimate, and says so.
    assert "energy cpu" in status and "estimated (estimate: 12 W per busy core" in status
    listed = json.loads(server.cli("jobs", "--json", "--state", "succeeded").stdout)
    assert int(job_id) in [j["id"] for j in listed]
    out = tmp_path / "out"
    dl = server.cli("download", job_id, str(out))
    assert dl.returncode == 0 and (out / "out.txt").read_text() == "result\n"
    long_name = "nightly-finetune-of-the-regional-language-model-on-the-whole-corpus"
    sleeper = server.cli(
        "submit", "--parsable", "--no-workdir", "--name", long_name, "--", "sleep", "60"
    ).stdout.strip()
    # Into a pipe the table keeps every row on one line, whole (Rich squeezed it into 80
    # columns, folding the name over lines).
    row = next(line.split() for line in server.cli("jobs").stdout.splitlines() if long_name in line)
    assert row[:3] == [sleeper, long_name, "default"]
    assert row[3] in {"pending", "admitted", "running"}
    cancel = server.cli("cancel", sleeper)
    assert cancel.returncode == 0
    wait_for(
        lambda: json.loads(server.cli("status", sleeper, "--json").stdout)["state"] == "cancelled"
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["submit", "--cpus", "99", "--", "true"], 2, "this machine has 2"),
        (["submit", "--cpus", "-1", "--", "true"], 2, "1 to 4096 CPUs"),
        (["submit", "--gpus", "9", "--", "true"], 2, "GPUs"),
        (["submit", "--mem", "lots", "--", "true"], 2, "memory size"),
        (["submit", "--time", "0", "--", "true"], 2, "more than zero"),
        (["submit", "--time", "soon", "--", "true"], 2, "duration"),
        (["submit"], 2, "no command"),
        (["submit", "--env", "NOEQUALS", "--", "true"], 2, "KEY=VALUE"),
        (["submit", "--workdir", "/nonexistent/dir", "--", "true"], 2, "not a directory"),
        (["submit", "--frobnicate", "--", "true"], 2, "No such option"),
        (["status", "999999"], 4, "no job 999999"),
        (["status", "abc"], 2, "not a whole number"),
        (["cancel", "999999"], 4, "no job 999999"),
    ],
)
def test_bad_input_is_one_clear_line_and_nonzero(
    server: ServerProcess, project: Path, args: list[str], code: int, message: str
) -> None:
    before = len(json.loads(server.cli("jobs", "--json", "--limit", "1000").stdout))
    r = server.cli(*args, cwd=project)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert message in " ".join(r.stderr.split())
    assert "Traceback" not in r.stderr
    assert len(json.loads(server.cli("jobs", "--json", "--limit", "1000").stdout)) == before


def test_oversized_workdir_is_refused_before_upload(server: ServerProcess, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    (big / "weights.bin").write_bytes(b"\0" * (5 * 2**20))
    r = server.cli("submit", "--", "true", cwd=big)
    assert r.returncode == 2 and "weights.bin" in r.stderr and ".fabriekignore" in r.stderr


def test_wrong_token_and_no_server(server: ServerProcess, tmp_path: Path) -> None:
    env = {**server.env, "FABRIEK_TOKEN": "fbk_wrong"}
    import subprocess

    r = subprocess.run([FABRIEK, "jobs"], env=env, capture_output=True, text=True)
    assert r.returncode == 3 and "not valid" in r.stderr
    env = {**server.env, "FABRIEK_URL": f"http://127.0.0.1:{free_port()}"}
    r = subprocess.run([FABRIEK, "jobs"], env=env, capture_output=True, text=True)
    assert r.returncode == 6 and "is `fabriek up` running?" in " ".join(r.stderr.split())


def test_login_writes_the_client_config(server: ServerProcess, tmp_path: Path) -> None:
    import subprocess

    env = {**server_env(tmp_path / "elsewhere"), "FABRIEK_CONFIG": str(tmp_path / "cfg.json")}
    bad = subprocess.run(
        [FABRIEK, "login", server.url, "--token", "fbk_nope"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 3 and not (tmp_path / "cfg.json").exists()
    ok = subprocess.run(
        [FABRIEK, "login", server.url, "--token", server.token],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "cfg.json").read_text())["url"] == server.url
    assert (
        subprocess.run([FABRIEK, "jobs"], env=env, capture_output=True, text=True).returncode == 0
    )


def test_digits_example_end_to_end(server: ServerProcess) -> None:
    """The README's first job: real training, real outputs."""
    r = server.cli(
        "submit",
        "--wait",
        "--cpus",
        "2",
        "--mem",
        "2G",
        "--time",
        "10m",
        "--name",
        "digits",
        "--env",
        "EPOCHS=15",
        "--",
        "python",
        "examples/train_digits.py",
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    job_id = json.loads(server.cli("jobs", "--json", "--limit", "1").stdout)[0]["id"]
    out = server.home.parent / "digits-out"
    server.cli("download", str(job_id), str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.85 and (out / "model.pkl").stat().st_size > 1000


def test_second_server_on_the_same_home_is_refused(server: ServerProcess) -> None:
    import subprocess

    r = subprocess.run(
        [FABRIEK, "up", "--port", str(free_port())],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 5 and "already running" in r.stderr


def test_up_refuses_bad_workers_and_a_taken_port(tmp_path: Path) -> None:
    import socket
    import subprocess

    env = server_env(tmp_path / "home")
    r = subprocess.run(
        [FABRIEK, "up", "--workers", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "invalid setting workers" in r.stderr, r.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        r = subprocess.run(
            [FABRIEK, "up", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert r.returncode == 5 and f"cannot listen on 127.0.0.1:{port}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "fabriek.db").exists()  # nothing created, no token lost


def test_up_says_how_jobs_are_isolated_and_can_require_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    import subprocess

    said = server.log.read_text()
    assert "jobs run sandboxed (bubblewrap), as their project's own uid, limits enforced" in said

    def refused(**env: str) -> str:
        """`fabriek up` with these settings: exit 6, nothing created (no token lost)."""
        run = subprocess.run(
            [FABRIEK, "up", "--port", str(free_port())],
            env={**server_env(tmp_path / "home"), **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 6 and "Traceback" not in run.stderr, run.stderr
        assert not (tmp_path / "home" / "fabriek.db").exists()
        return run.stderr

    said = refused(FABRIEK_SANDBOX="0", FABRIEK_REQUIRE_ISOLATION="1")
    assert "FABRIEK_REQUIRE_ISOLATION is set, but jobs would not be fully isolated" in said
    assert "FABRIEK_SANDBOX is off" in said
    # As root with the sandbox on but broken (here: no bubblewrap on its PATH), jobs would run
    # as root: it fails closed.
    said = refused(PATH=str(tmp_path / "empty"))
    assert "runs as root and cannot sandbox jobs" in said and "bubblewrap is not installed" in said


def test_db_upgrade_command(tmp_path: Path) -> None:
    import subprocess

    env = server_env(tmp_path / "fresh")
    first = subprocess.run([FABRIEK, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert first.returncode == 0 and f"revision {head_revision()}" in first.stdout, first.stderr
    assert (tmp_path / "fresh" / "fabriek.db").exists()
    again = subprocess.run([FABRIEK, "db", "upgrade"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and f"revision {head_revision()}" in again.stdout


def test_job_sees_its_variables_not_the_servers_secrets(server: ServerProcess) -> None:
    r = server.cli(
        "submit",
        "--wait",
        "--no-workdir",
        "--env",
        "GREETING=hoi",
        "--",
        "sh",
        "-c",
        "echo $GREETING $FABRIEK_JOB_ID $FABRIEK_CPUS [$FABRIEK_CONFIG] [$FABRIEK_HOME]",
    )
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert (
        words[0] == "hoi" and words[1].isdigit() and words[2] == "1" and words[3:] == ["[]", "[]"]
    )


def test_markup_in_user_data_is_shown_literally(server: ServerProcess) -> None:
    r = server.cli("submit", "--parsable", "--no-workdir", "--name", "[/]evil[bold]", "--", "true")
    assert r.returncode == 0, r.stderr
    wait_for(
        lambda: (
            json.loads(server.cli("status", r.stdout.strip(), "--json").stdout)["state"]
            == "succeeded"
        )
    )
    table = server.cli("jobs")
    assert table.returncode == 0 and "[/]evil[bold]" in table.stdout
    assert "[/]evil[bold]" in server.cli("status", r.stdout.strip()).stdout


def test_tenancy_verbs_from_user_to_job(server: ServerProcess) -> None:
    made = server.cli("user", "create", "anna-cli")
    assert made.returncode == 0, made.stderr
    anna_token = made.stdout.strip()
    assert anna_token.startswith("fbk_") and "shown once" in made.stderr
    for args in (
        (
            "org",
            "create",
            "rug-cli",
            "--display-name",
            "University of Groningen",
            "--kind",
            "university",
            "--country",
            "NL",
            "--region",
            "NL11",
        ),
        ("org", "verify", "rug-cli"),
        ("org", "add-member", "rug-cli", "anna-cli"),
        ("project", "create", "vision-cli", "--org", "rug-cli"),
        ("project", "add-member", "vision-cli", "anna-cli"),
    ):
        r = server.cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    eligible = json.loads(server.cli("org", "pools", "rug-cli", "--json").stdout)
    assert {p["pool"] for p in eligible if p["eligible"]} == {
        "regional",
        "eurohpc",
        "national",
        "commercial",
    }
    listed = server.cli("pool", "list")
    assert listed.returncode == 0 and "guarantees sum to 100%" in listed.stdout
    shown = json.loads(server.cli("org", "show", "rug-cli", "--json").stdout)
    assert shown["organisation"]["verified"] and shown["organisation"]["region"] == "NL11"
    assert {m["user"]: m["role"] for m in shown["members"]}["anna-cli"] == "member"

    anna = dict(server.env, FABRIEK_URL=server.url, FABRIEK_TOKEN=anna_token)
    anna.pop("FABRIEK_CONFIG")

    def as_anna(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FABRIEK, *args], env=anna, capture_output=True, text=True, timeout=60
        )

    assert [p["name"] for p in json.loads(as_anna("project", "list", "--json").stdout)] == [
        "vision-cli"
    ]
    r = as_anna("submit", "--parsable", "--no-workdir", "--project", "vision-cli", "--", "true")
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr
    granted = server.cli(
        "allocation",
        "grant",
        "--project",
        "vision-cli",
        "--pool",
        "regional",
        "--gpu-hours",
        "1",
        "--days",
        "30",
        "--json",
    )
    assert granted.returncode == 0, granted.stderr
    allocation = json.loads(granted.stdout)["id"]
    r = as_anna(
        "submit", "--parsable", "--no-workdir", "--project", "vision-cli", "--gpus", "1",
        "--time", "30m", "--allocation", str(allocation), "--", "sleep", "30",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    charged_job = int(r.stdout)
    r = as_anna(
        "submit", "--no-workdir", "--project", "vision-cli", "--gpus", "1", "--time", "1h",
        "--allocation", str(allocation), "--", "true",
    )  # fmt: skip
    assert r.returncode == 5 and "0.500 GPU-hours left" in r.stderr, r.stderr
    listed = json.loads(as_anna("allocation", "list", "--json").stdout)
    assert [(a["id"], a["held_gpu_hours"]) for a in listed] == [(allocation, 0.5)]
    assert as_anna("cancel", str(charged_job)).returncode == 0
    wait_for(
        lambda: (
            json.loads(as_anna("status", str(charged_job), "--json").stdout)["charged_gpu_hours"]
            is not None
        ),
        what="the charge of the cancelled job",
    )
    listed = json.loads(as_anna("allocation", "list", "--json").stdout)
    assert listed[0]["held_gpu_hours"] == 0 and 0 <= listed[0]["charged_gpu_hours"] < 0.5
    r = as_anna("user", "list")
    assert r.returncode == 3 and "only operators" in r.stderr
    r = as_anna("project", "create", "mine", "--org", "rug-cli")
    assert r.returncode == 3 and "only owners and managers" in r.stderr

    second = as_anna("token", "create", "laptop", "--days", "7")
    assert second.returncode == 0, second.stderr
    tokens = json.loads(as_anna("token", "list", "--json").stdout)
    laptop = next(t for t in tokens if t["name"] == "laptop")
    assert second.stdout.strip().startswith(laptop["prefix"])
    assert as_anna("token", "revoke", str(laptop["id"])).returncode == 0
    laptop_env = dict(anna, FABRIEK_TOKEN=second.stdout.strip())
    r = subprocess.run(
        [FABRIEK, "jobs"], env=laptop_env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 3 and "revoked" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("org", "create", "BAD", "--display-name", "x", "--kind", "sme"),
            "invalid organisation name",
        ),
        (("org", "create", "okname", "--display-name", "x", "--kind", "alien"), "alien"),
        (
            ("org", "create", "okname", "--display-name", "x", "--kind", "sme", "--region", "NL11"),
            "needs a country",
        ),
        (("org", "show", "nowhere"), "no organisation named 'nowhere'"),
        (("project", "add-member", "default", "nobody"), "no user named 'nobody'"),
        (("token", "create", "x", "--days", "0"), "1 to 366 days"),
        (("token", "revoke", "999999"), "no token 999999"),
        (("pool", "create", "more", "--guarantee", "0.5"), "would sum to 150%"),
        (("pool", "update", "regional", "--guarantee", "2"), "fraction from 0 to 1"),
        (("pool", "update", "nowhere", "--guarantee", "0.1"), "no pool named 'nowhere'"),
    ],
)
def test_tenancy_bad_input_is_one_clear_line(
    server: ServerProcess, args: tuple[str, ...], message: str
) -> None:
    r = server.cli(*args)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_call_application_review_allocation(server: ServerProcess) -> None:
    for args in (
        ("org", "create", "umcg-cli", "--display-name", "UMCG", "--kind", "health",
         "--country", "NL", "--region", "NL11"),
        ("org", "verify", "umcg-cli"),
        ("project", "create", "mri-cli", "--org", "umcg-cli"),
        ("call", "create", "fl-cli", "--title", "Fast Lane", "--pool", "regional",
         "--mode", "fast_lane", "--opens", "2020-01-01T00:00Z", "--closes", "2100-01-01T00:00Z",
         "--total-gpu-hours", "100", "--max-gpu-hours", "20"),
    ):  # fmt: skip
        r = server.cli(*args)
        assert r.returncode == 0, (args, r.stderr)
    assert "fl-cli" in server.cli("call", "list").stdout
    r = server.cli("apply", "fl-cli", "--project", "mri-cli", "--gpu-hours", "30", "--title", "x")
    assert r.returncode == 2 and "at most 20 per application" in r.stderr, r.stderr
    r = server.cli(
        "apply", "fl-cli", "--project", "mri-cli", "--gpu-hours", "10", "--title", "MRI", "--json"
    )
    assert r.returncode == 0, r.stderr
    app = json.loads(r.stdout)
    assert app["state"] == "submitted"

    made = server.cli("user", "create", "rev-cli", "--reviewer")
    reviewer = dict(server.env, FABRIEK_URL=server.url, FABRIEK_TOKEN=made.stdout.strip())
    reviewer.pop("FABRIEK_CONFIG")

    def as_reviewer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FABRIEK, *args], env=reviewer, capture_output=True, text=True, timeout=60
        )

    r = as_reviewer("review", str(app["id"]), "--score", "4", "--comment", "well planned")
    assert r.returncode == 0 and "is approved" in r.stdout, r.stderr
    r = as_reviewer("review", str(app["id"]), "--score", "1", "--comment", "again")
    assert r.returncode == 5 and "takes no reviews" in r.stderr
    shown = json.loads(server.cli("application", "show", str(app["id"]), "--json").stdout)
    assert shown["allocation"] is not None and shown["reviews"][0]["reviewer"] == "rev-cli"
    grants = json.loads(server.cli("allocation", "list", "--project", "mri-cli", "--json").stdout)
    assert [(g["id"], g["gpu_hours"], g["pool"]) for g in grants] == [
        (shown["allocation"], 10, "regional")
    ]


def test_usage_and_share_report(server: ServerProcess) -> None:
    r = server.cli("submit", "--parsable", "--no-workdir", "--gpus", "1", "--", "true")
    job = int(r.stdout)
    wait_for(
        lambda: json.loads(server.cli("status", str(job), "--json").stdout)["state"] == "succeeded",
        what="a GPU job",
    )
    rows = json.loads(server.cli("usage", "--by", "pool", "--json").stdout)
    assert any(row["key"] == "unallocated" and row["jobs"] >= 1 for row in rows)
    table = server.cli("usage", "--by", "organisation")
    assert table.returncode == 0 and "default" in table.stdout
    shares = json.loads(server.cli("report", "shares", "--json").stdout)
    assert {row["pool"] for row in shares} >= {"regional", "eurohpc", "national", "commercial"}
    assert server.cli("usage", "--from", "2026-01-01", "--to", "2100-01-01").returncode == 0
    r = server.cli("usage", "--from", "2026-12-01", "--to", "2026-11-01")
    assert r.returncode == 2 and "must end after it begins" in r.stderr
    r = server.cli("usage", "--by", "colour")
    assert r.returncode == 2 and "colour" in r.stderr


def test_status_says_why_a_job_waits_in_which_pool_and_when_it_may_start(
    server: ServerProcess,
) -> None:
    hog = server.cli(
        "submit", "--parsable", "--no-workdir", "--gpus", "2", "--time", "10m", "--preemptible",
        "--", "sleep", "60",
    ).stdout.strip()  # fmt: skip
    wait_for(lambda: json.loads(server.cli("status", hog, "--json").stdout)["state"] == "running")
    waiting = server.cli(
        "submit", "--parsable", "--no-workdir", "--gpus", "1", "--", "true"
    ).stdout.strip()

    def estimated() -> dict[str, object] | None:
        shown = json.loads(server.cli("status", waiting, "--json").stdout)
        return shown if shown["estimated_start_at"] else None

    shown = wait_for(estimated, what="the waiting job's estimated start")
    assert shown["state"] == "pending" and shown["pool"] is None and shown["preemptible"] is True
    assert shown["reason"] == "waiting for 1 test-gpu GPUs on 1 node to free up"
    hog_shown = json.loads(server.cli("status", hog, "--json").stdout)
    assert hog_shown["borrowed"] is True and hog_shown["preemptible"] is True
    text = server.cli("status", waiting).stdout
    assert "unallocated (runs on idle GPUs)" in text
    assert "0 older jobs waiting in its pool; estimated start" in text
    for job in (waiting, hog):
        assert server.cli("cancel", job).returncode == 0
    wait_for(lambda: json.loads(server.cli("status", hog, "--json").stdout)["state"] == "cancelled")


def test_facility_carbon_footprints_and_the_facility_report(
    server: ServerProcess, tmp_path: Path
) -> None:
    assert server.cli("facility", "set", "--pue", "1.25", "--wue-onsite", "0.3").returncode == 0
    r = server.cli("facility", "set", "--pue", "0.9")
    assert r.returncode == 2 and "PUE below 1 is impossible" in r.stderr
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    lines = [f"{(hour + timedelta(hours=i)).isoformat()},{200 + i},{300 + i}" for i in range(48)]
    series = tmp_path / "nl.csv"
    series.write_text("hour,direct_g_per_kwh,life_cycle_g_per_kwh\n" + "\n".join(lines) + "\n")
    r = server.cli("facility", "carbon", "load", str(series))
    assert r.returncode == 0 and "loaded 48 hours of NL (direct, life_cycle)" in r.stdout
    broken = tmp_path / "gap.csv"
    broken.write_text(series.read_text().replace(lines[3] + "\n", ""))
    r = server.cli("facility", "carbon", "load", str(broken))
    assert r.returncode == 2 and "row 5, column 'hour': a gap" in r.stderr
    shown = server.cli("facility", "show").stdout
    assert "PUE 1.25" in shown and "48" in shown

    r = server.cli("submit", "--no-workdir", "--flexible", "2h", "--", "true")
    assert r.returncode == 2 and "needs a time limit (--time)" in r.stderr
    job = server.cli("submit", "--parsable", "--no-workdir", "--", "sleep", "0.3").stdout.strip()
    wait_for(lambda: json.loads(server.cli("status", job, "--json").stdout)["state"] == "succeeded")
    footprint = json.loads(server.cli("status", job, "--json").stdout)["footprint"]
    assert footprint["facility_kwh"] == pytest.approx(footprint["it_kwh"] * 1.25)
    assert footprint["carbon_kg"] > 0 and "NL grid, life-cycle intensity" in footprint["note"]
    assert "footprint" in server.cli("status", job).stdout
    usage = json.loads(server.cli("usage", "--by", "project", "--json").stdout)
    assert any(row["facility_kwh"] > 0 and row["carbon_kg"] for row in usage)
    [total] = json.loads(server.cli("usage", "--by", "factory", "--json").stdout)
    assert total["key"] == "factory"
    assert total["facility_kwh"] == pytest.approx(sum(r["facility_kwh"] for r in usage))

    r = server.cli(
        "facility", "reading", "add", "--from", "2026-01-01", "--to", "2026-02-01",
        "--total-kwh", "1300", "--it-kwh", "1000", "--water-m3", "2",
        "--renewable-kwh", "650",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = server.cli("facility", "report", "--from", "2026-01-01", "--to", "2026-03-01", "--csv")
    header, row = report.stdout.splitlines()
    assert header.startswith("period_start,") and ",1.3," in row and ",0.5," in row
