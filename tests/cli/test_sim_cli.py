"""`fabriek simulate` and `fabriek plan` as a user runs them: real processes, the traces shipped
with fabriek (fabriek.data)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fabriek import data
from tests.helpers import FABRIEK

# The traces shipped with fabriek, by the names a user types; the grid series by its file.
ITP01 = "itp/cluster01"
ITP04 = "itp/cluster04"
PHILLY = "philly"
GRID = str(data.path("nl-grid"))


def fabriek(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FABRIEK, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_progress_reaches_stderr_as_lines_when_it_is_a_pipe(tmp_path: Path) -> None:
    """Into a pipe or a file, where bars show nothing, progress comes as a line every few
    seconds (here 0.2) and one for each replay done; stdout keeps only the results."""
    r = subprocess.run([FABRIEK, "simulate", ITP04, "--max-jobs", "4000", "--compare", "fifo,fabriek",
                        "--no-carbon", "--workers", "1"], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path,
                       env={**os.environ, "FABRIEK_PROGRESS_SECONDS": "0.2"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "fifo: 4,000/4,000 jobs (100%)" in r.stderr
    assert "fabriek: 4,000/4,000 jobs (100%)" in r.stderr
    assert len([ln for ln in lines if ln.startswith("fabriek: ")]) >= 2, r.stderr
    assert "jobs (" not in r.stdout and "\x1b[" not in r.stderr


def test_simulate_compares_policies_and_writes_json_and_a_report(tmp_path: Path) -> None:
    r = fabriek("simulate", ITP01, "--max-jobs", "200", "--compare", "fifo,easy,fabriek",
                "--carbon", GRID, "--json", "out.json", "--report", "out.html", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for policy in ("fifo", "easy", "fabriek"):
        assert policy in r.stdout
    assert "t CO2e" in r.stdout and "GUARANTEE" in r.stdout
    data = json.loads((tmp_path / "out.json").read_text())
    assert [p["policy"] for p in data["policies"]] == ["fifo", "easy", "fabriek"]
    assert data["workload"]["jobs"] == 200
    assert (tmp_path / "out.html").read_text().count("<svg") >= 4


def test_simulate_with_checkpoints_loses_no_work_to_preemption(tmp_path: Path) -> None:
    r = fabriek("simulate", PHILLY, "--format", "philly", "--max-jobs", "1500", "--load", "1.0",
                "--checkpoints", "--no-carbon", "--json", "out.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    [p] = data["policies"]
    assert data["workload"]["checkpoints"] is True
    assert p["preemptions"] > 0 and p["lost_gpu_hours"] == 0


def test_simulate_reports_what_deferring_flexible_jobs_saved(tmp_path: Path) -> None:
    r = fabriek("simulate", ITP01, "--max-jobs", "300", "--flexible", "0.5", "--slack", "12h",
                "--exact-limits", "--carbon", GRID, "--json", "out.json", "--report", "out.html",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    [p] = json.loads((tmp_path / "out.json").read_text())["policies"]
    # Said as it is: "saved" for a saving, "added" where the replay as a whole emitted more
    verb = "saved" if p["green"]["saved_t_co2e"] >= 0 else "added"
    assert f"flexible jobs {verb} " in r.stdout and "deadlines missed" in r.stdout
    assert "without deferral)" in r.stdout and "own footprint fell" in r.stdout
    assert p["flexible"]["jobs"] > 100 and p["flexible"]["deferred"] > 0
    green = p["green"]
    assert green["saved_t_co2e"] == pytest.approx(
        green["without_deferral_t_co2e"] - green["t_co2e"]
    )
    assert green["saved_t_co2e"] > 0
    assert isinstance(green["deadlines_missed_without_deferral"], int)
    assert green["deferred_g_per_kwh_as_run"] < green["deferred_g_per_kwh_at_submit"]
    assert "flexible jobs to greener hours saved" in (tmp_path / "out.html").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", ITP01, "--compare", "fifo,nope"], "unknown policy nope"),
        (["simulate", ITP01, "--format", "csv"], "needs columns for submit, duration and gpus"),
        (["simulate", ITP01, "--pools", "a=2"], "cannot read pool"),
        (["simulate", "/no/such.csv"], "no trace file '/no/such.csv'"),
        (["simulate", "cluster99"], "shipped: itp/cluster01, itp/cluster02"),
        (
            ["simulate", "philly", "--format", "itp"],
            "it looks like a philly trace: add --format philly",
        ),
        (["simulate", GRID], "are not those of an ITP or Philly trace; for a CSV of your own"),
        (["simulate", ITP01, "--gpus", "12"], "multiple of 8"),
        (["simulate", ITP01, "--flexible", "0.3", "--no-carbon"], "need a carbon series"),
        (["simulate", ITP01, "--flexible", "1.5", "--carbon", GRID], "flexible share must lie"),
        (["simulate", ITP01, "--flexible", "0.3", "--slack", "soon"], "cannot read duration"),
        (["simulate", ITP01, "--starving-after", "later"], "cannot read duration"),
        (["simulate", ITP01, "--workers", "0", "--no-carbon"], "at least 1"),
        (["simulate", ITP01, "--compare", ""], "--compare names no policy"),
        (["simulate", ITP01, "--policy", "easy", "--compare", "fifo"], "not both"),
        (
            ["simulate", ITP01, "--format", "itp", "--columns", "gpus=num_gpu"],
            "--columns is for --format csv",
        ),
        (
            [
                "simulate",
                ITP01,
                "--format",
                "csv",
                "--columns",
                "submit=submission_time,duration=duration,gpus=num_gpu,submit=duration",
            ],
            "--columns names submit twice",
        ),
        (["simulate", ITP01, "--load", "nan"], "--load is from 0.01 to 100"),
        (["simulate", ITP01, "--load", "1e-9"], "--load is from 0.01 to 100"),
        (["simulate", ITP01, "--gpus-per-node", "0"], "(--gpus-per-node) are 1 to 64; got 0"),
        (["simulate", ITP01, "--max-jobs", "-5"], "--max-jobs must be at least 1"),
        (["simulate", ITP01, "--max-jobs", "1"], "(--gpus N --load 0)"),
        (["plan", "--trace", ITP01, "--max-jobs", "1"], "all submitted at one moment"),
        (
            ["plan", "--trace", ITP01, "--hardware", "h100:gpus=200"],
            "(--gpus-per-node) are 1 to 64; got 200",
        ),
        (["simulate", ITP01, "--policy", "fifo,easy"], "--policy names one"),
        (["simulate", ITP01, "--policy", ""], "--policy names one"),
        (["plan", "--trace", ITP01, "--budget", "80-120"], "buys not one H100 node"),
        (["plan", "--trace", ITP01, "--electricity", "nan"], "--electricity must be a finite"),
        (["plan", "--trace", ITP01, "--gpu-hours-per-year", "nan"], "a number above 0; got nan"),
        (["plan", "--trace", ITP01, "--maintenance", "5"], "fraction of the capex a year"),
        (["plan", "--trace", ITP01, "--max-jobs", "0"], "--max-jobs must be at least 1"),
        (["plan", "--trace", ITP01, "--pools", "regional=2"], "cannot read pool"),
        (["plan", "--trace", ITP01, "--users", "5", "--gpu-hours-per-year", "1e5"], "not both"),
        (["plan", "--trace", ITP01, "--budget", "lots"], "cannot read the budget"),
        (["plan", "--trace", ITP01, "--pue", "0.8", "--carbon", GRID], "PUE below 1"),
        (["plan", "--trace", ITP01, "--carbon", "/no/grid.csv"], "cannot read the carbon series"),
        (["plan", "--trace", ITP01, "--workers", "0", "--carbon", GRID], "at least 1"),
        (
            ["plan", "--trace", ITP01, "--hardware", "nope", "--carbon", GRID],
            "no hardware option 'nope': the catalogue has h100, h200, b200",
        ),
        (
            ["plan", "--trace", ITP01, "--hardware", "b200:price=lots", "--carbon", GRID],
            "price must be a number, got 'lots'",
        ),
        (
            ["plan", "--trace", ITP01, "--hardware", "b200:colour=red", "--carbon", GRID],
            "the fields are price, kw, gpus, speed, lifetime, idle",
        ),
        (
            ["plan", "--trace", ITP01, "--hardware", "b200:speed=0", "--carbon", GRID],
            "the speed (speed=) must be above 0 (hardware B200 node (8 GPUs), speed=0)",
        ),
        (
            [
                "plan",
                "--trace",
                ITP01,
                "--hardware",
                "h100",
                "--hardware",
                "b200",
                "--node-price",
                "1",
                "--carbon",
                GRID,
            ],
            "--node-price changes one hardware option",
        ),
        (
            [
                "plan",
                "--trace",
                ITP01,
                "--hardware",
                "b200",
                "--hardware",
                "B200",
                "--carbon",
                GRID,
            ],
            "two hardware options have the same name",
        ),
    ],
)
def test_bad_input_is_named_and_exits_non_zero(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = fabriek(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert message in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_plan_prints_a_markdown_table(tmp_path: Path) -> None:
    r = fabriek("plan", "--trace", ITP01, "--max-jobs", "200", "--budget", "2.8M-5.6M",
                "--sizes", "2", "--carbon", GRID, "--markdown", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| nodes | GPUs | capex M€") and len(lines) == 3
    assert lines[1].startswith("| 8 | 64 | 2.8 |") and lines[2].startswith("| 16 | 128 | 5.6 |")


def test_plan_compares_hardware_options_in_one_table(tmp_path: Path) -> None:
    r = fabriek("plan", "--trace", ITP01, "--max-jobs", "200", "--budget", "2.8M-5.6M",
                "--sizes", "2", "--carbon", GRID, "--markdown", "--hardware", "h100",
                "--hardware", "b200", "--hardware", "b200:price=700000",
                "--hardware", "lab:price=350000,kw=10.2,speed=0.5",
                "--json", "plan.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [line.split(" | ") for line in r.stdout.splitlines() if line.startswith("| ")]
    assert lines[0][:2] == ["| hardware", "nodes"] and lines[0][6] == "€/H100-h"
    assert [(row[0], row[1]) for row in lines[1:]] == [
        ("| H100 node (8 GPUs)", "8"), ("| H100 node (8 GPUs)", "16"),
        ("| B200 node (8 GPUs)", "6"), ("| B200 node (8 GPUs)", "11"),
        ("| B200 node (8 GPUs), price=700000", "4"), ("| B200 node (8 GPUs), price=700000", "8"),
        ("| lab", "8"), ("| lab", "16"),
    ]  # fmt: skip
    assert "B200 node (8 GPUs), price=700000 at €700,000, 14.3 kW, 5 years, 2x an H100" in r.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert [h["speed"] for h in plan["hardware"]] == [1.0, 2.0, 2.0, 0.5]
    h100, lab = plan["sizes"][0], plan["sizes"][6]
    # The same machine at half the speed: twice the load, the same demand served at a higher cost.
    assert lab["offered_load"] == pytest.approx(2 * h100["offered_load"])
    assert lab["cost_per_demand_gpu_hour_eur"] > h100["cost_per_demand_gpu_hour_eur"]


def test_plan_into_a_file_prints_every_figure_whole(tmp_path: Path) -> None:
    """Not a terminal: the table keeps its width (Rich's 80 columns cut it to `CAP…`, `1,8…`)."""
    r = fabriek("plan", "--trace", ITP01, "--max-jobs", "200", "--budget", "2.8M-5.6M",
                "--sizes", "2", "--carbon", GRID, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "…" not in r.stdout
    header = next(line for line in r.stdout.splitlines() if "NODES" in line)
    assert "CAPEX M€" in header and "t CO2e/yr" in header and "MWh/yr" in header
    rows = [
        line.split() for line in r.stdout.splitlines() if line.strip().startswith(("8 ", "16 "))
    ]
    assert [row[:3] for row in rows] == [["8", "64", "2.8"], ["16", "128", "5.6"]]


def test_plan_from_any_directory_flags_a_size_that_cannot_keep_up(tmp_path: Path) -> None:
    """The Dutch series is found beside the checkout wherever the command runs (no --carbon);
    a size offered more than it can run says so, and is costed on what it can run."""
    r = fabriek("plan", "--trace", ITP01, "--max-jobs", "300", "--budget", "0.7M-3M", "--sizes",
                "2", "--gpu-hours-per-year", "300000", "--pools", "regional=0.4:4,rest=0.6:8", "--json",
                "p.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    sizes = json.loads((tmp_path / "p.json").read_text())["sizes"]
    small, large = sizes
    assert small["offered_load"] > 1 and not small["keeps_up"] and large["keeps_up"]
    assert "* a load above 1: the size cannot run the demand" in r.stdout
    assert f"{small['offered_load']:.2f}*" in r.stdout
    # Costed per GPU-hour it can run: the same as its cost per GPU-hour at full use, not less.
    assert small["cost_per_demand_gpu_hour_eur"] == pytest.approx(small["cost_per_gpu_hour_eur"])
    assert small["t_co2e_per_year"] > 0  # the default series was read
    assert small["regional_share"] is not None  # the pools given, regional among them


def test_simulate_finds_the_carbon_series_from_any_directory(tmp_path: Path) -> None:
    r = fabriek("simulate", ITP01, "--max-jobs", "200", "--carbon", str(tmp_path / "none.csv"),
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "cannot read the carbon series" in r.stderr
    r = fabriek("simulate", ITP01, "--max-jobs", "200", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "t CO2e" in r.stdout  # the default series, found from another directory


def test_plan_reads_a_csv_trace_with_a_column_mapping(tmp_path: Path) -> None:
    rows = data.read_text(data.path(ITP01)).splitlines()[1:201]
    lines = ["arrival,runtime,n_gpu"] + [
        ",".join((r.split(",")[1], r.split(",")[2], r.split(",")[3])) for r in rows
    ]
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    r = fabriek("plan", "--trace", "mine.csv", "--format", "csv", "--columns",
                "submit=arrival,duration=runtime,gpus=n_gpu", "--budget", "2.8M-5.6M", "--sizes",
                "1", "--json", "p.json", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["demand"]["jobs"] > 150


@pytest.mark.parametrize(
    ("workers", "after"), [("1", 4.0), ("2", 4.0), ("2", 0.3), ("2", 0.9), ("2", 1.5)]
)
def test_ctrl_c_stops_a_comparison_cleanly(tmp_path: Path, workers: str, after: float) -> None:
    """Ctrl-C at a terminal signals the whole process group, the workers too: one line, exit
    status 130, nothing written, and no process of the group left behind. Also early, while the
    command or its workers are still starting (each worker printed its own KeyboardInterrupt
    traceback then), and with no warning of leaked semaphores from multiprocessing."""
    process = subprocess.Popen(
        [FABRIEK, "simulate", ITP04, "--compare", "fifo,easy,fabriek", "--no-carbon", "--load", "1.2",
         "--workers", workers, "--json", "out.json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    time.sleep(after)  # 4 s: well into the replays (fabriek's alone takes 20 s and more at 1.2)
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted"), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "leaked" not in err
    assert not (tmp_path / "out.json").exists()
    for _ in range(100):  # the workers go with it (a zombie lingers until init reaps it)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a process of the command's group outlived it by 10 s")


def test_a_file_without_format_is_read_by_its_header_and_says_so(tmp_path: Path) -> None:
    """`fabriek simulate philly.csv` without --format (the issue: suggest the flag) reads it as
    the Philly trace it is, and says so on stderr."""
    rows = data.read_text(data.path("philly")).splitlines()[:801]
    (tmp_path / "philly.csv").write_text("\n".join(rows) + "\n")
    r = fabriek("simulate", "philly.csv", "--policy", "fifo", "--no-carbon", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "philly.csv: read as a Philly trace, from its header" in r.stderr
    assert "800 jobs" in r.stdout
