"""Shared plumbing of the benchmarks: throwaway databases, a `fabriek up` server, statistics, output.

Not a benchmark itself. The scripts next to it import it (`python benchmarks/NAME.py` puts this
directory on sys.path).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fabriek.backends.base import read_job_file

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
DATABASES = ("sqlite", "postgres")


# --- statistics ---------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of durations given in seconds, in milliseconds."""
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p90_ms": percentile(seconds, 90) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000,
        "mean_ms": statistics.fmean(seconds) * 1000,
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(memory / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "code": code_version(),
    }


def code_version() -> dict[str, Any]:
    """Which fabriek was measured: where it was imported from and, in a git checkout, the commit and
    whether src/ had uncommitted changes."""
    import importlib.util

    spec = importlib.util.find_spec("fabriek")
    origin = Path(spec.origin).parent if spec and spec.origin else None
    info: dict[str, Any] = {"fabriek": str(origin) if origin else None}
    if origin is None:
        return info
    try:
        top = subprocess.run(
            ["git", "-C", str(origin), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["commit"] = subprocess.run(
            ["git", "-C", top, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", top, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        info["src_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def describe(info: dict[str, Any]) -> str:
    """One line about the machine and the code, for the top of a report."""
    code = info.get("code", {})
    where = f"commit {code['commit']}" if code.get("commit") else str(code.get("fabriek"))
    if code.get("src_dirty"):
        where += " + uncommitted changes in src/"
    return (
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['memory_gib']} GiB, Linux "
        f"{info['kernel']}, Python {info['python']}; fabriek {where}"
    )


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"wrote {path}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


# --- databases ----------------------------------------------------------------------------------
@contextmanager
def database(kind: str, pg_base: str = DEFAULT_PG) -> Iterator[str | None]:
    """None for SQLite (the server's default under its home); a fresh PostgreSQL database's URL,
    dropped afterwards, for postgres."""
    if kind == "sqlite":
        yield None
        return
    if kind != "postgres":
        raise ValueError(f"unknown database {kind!r}")
    import psycopg

    name = f"fabriek_bench_{uuid.uuid4().hex[:12]}"
    admin = pg_base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{pg_base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- processes ----------------------------------------------------------------------------------
def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that `finally` blocks still stop the server, kill the jobs
    and drop the database when the benchmark is terminated rather than interrupted."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc/PID/stat (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _all_processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, command name, CPU seconds) of every process we may read. The CPU seconds include
    those of its children that ended and were waited for, so work of short-lived processes counts
    for whoever started them."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu = sum(int(v) for v in fields[11:15]) / tick  # utime, stime, cutime, cstime
        found[int(entry.name)] = (int(fields[1]), comm, cpu)
    return found


def _machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class CpuMonitor:
    """Who used the CPUs during a measurement: this benchmark (this process, the server and their
    children), PostgreSQL, and everything else on the machine. Other load on a small machine skews
    every number, so each result carries this next to it. Values are in cores (1.0 = one core busy)."""

    def __init__(self, *roots: int) -> None:
        self.roots = {os.getpid(), *roots}
        self._start()

    def _ours(self, procs: dict[int, tuple[int, str, float]]) -> set[int]:
        ours, changed = set(self.roots), True
        while changed:
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return ours

    def _start(self) -> None:
        self.began = time.perf_counter()
        self.busy, self.steal = _machine_cpu()
        self.procs = _all_processes()

    def restart(self) -> None:
        self._start()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.began
        busy, steal = _machine_cpu()
        procs = _all_processes()
        ours_pids = self._ours(procs) | self._ours(self.procs)
        ours = postgres = 0.0
        for pid, (_, comm, cpu) in procs.items():
            before = self.procs.get(pid)
            used = cpu - before[2] if before and before[1] == comm else cpu
            if pid in ours_pids:
                ours += used
            elif comm == "postgres":
                postgres += used
        total = busy - self.busy
        return {
            "wall_s": wall,
            "machine_busy_cores": total / wall,
            "benchmark_cores": ours / wall,
            "postgres_cores": postgres / wall,
            "other_cores": max(0.0, total - ours - postgres) / wall,
            "steal_cores": (steal - self.steal) / wall,
        }


def wait_for_quiet(max_wait: float, *roots: int, threshold: float = 0.15) -> None:
    """Wait (at most max_wait seconds) until other processes use less than `threshold` cores over
    3 s, so a measurement does not share this machine with someone's test run. 0: do not wait."""
    if max_wait <= 0:
        return
    began = time.monotonic()
    while True:
        monitor = CpuMonitor(*roots)
        time.sleep(3)
        cpu = monitor.stop()
        foreign = cpu["machine_busy_cores"] - cpu["benchmark_cores"] + cpu["steal_cores"]
        waited = time.monotonic() - began
        if foreign < threshold:
            if waited > 4:
                print(f"(waited {waited:.0f} s for the machine to be quiet)", flush=True)
            return
        if waited > max_wait:
            print(
                f"(the machine is still busy after {waited:.0f} s: {foreign:.2f} cores)", flush=True
            )
            return


def foreign_load(cpu: dict[str, float], *, uses_postgres: bool) -> float:
    """Cores that other work took during a measurement (PostgreSQL counts when this run did not use
    it: then it served someone else)."""
    foreign = cpu["other_cores"] + cpu["steal_cores"]
    return foreign if uses_postgres else foreign + cpu["postgres_cores"]


NOISY = 0.2  # cores of foreign load above which a result is flagged


def describe_cpu(cpu: dict[str, float]) -> str:
    return (
        f"CPU (cores): benchmark+server {cpu['benchmark_cores']:.2f}, PostgreSQL "
        f"{cpu['postgres_cores']:.2f}, other processes {cpu['other_cores']:.2f}, steal "
        f"{cpu['steal_cores']:.2f}"
    )


def kill_job_processes(jobs_dir: Path) -> int:
    """SIGKILL every job and supervisor that fabriek started under jobs_dir and that still runs.

    Each job and each supervisor leads its own process group; a pid is signalled only while its start
    time still matches the one fabriek recorded (pids get reused). Returns how many groups were hit.
    """
    killed = 0
    if not jobs_dir.is_dir():
        return 0
    for job_dir in jobs_dir.iterdir():
        for name in ("started.json", "shim.json"):
            try:
                # Written by the job: read as the controller reads it (no link, no FIFO, bounded).
                info = json.loads(read_job_file(job_dir / name) or b"")
            except (OSError, ValueError):
                continue
            pid = info.get("pid")
            if isinstance(pid, int) and _start_ticks(pid) == info.get("pid_start"):
                try:
                    os.killpg(pid, signal.SIGKILL)
                    killed += 1
                except (ProcessLookupError, PermissionError):
                    pass
    return killed


@dataclass
class Server:
    """A `fabriek up` subprocess on its own temporary home."""

    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    token: str
    database: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server has used so far: its main process and every live
        process under it (the API workers, the launcher). Take differences over a measurement:
        a descendant that ends takes its time with it unless the server waited for it."""
        procs = _all_processes()
        tree, changed = {self.proc.pid}, True
        while changed:
            changed = False
            for pid, (ppid, _, _) in procs.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return sum(process_cpu_seconds(pid) for pid in tree)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _fabriek_executable() -> str:
    candidate = Path(sys.executable).with_name("fabriek")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("fabriek")
    if found is None:
        raise SystemExit("cannot find the `fabriek` command; run with the project's .venv python")
    return found


@contextmanager
def fabriek_server(
    *,
    database_url: str | None,
    cpus: int,
    memory: str = "64G",
    extra_env: dict[str, str] | None = None,
    startup_timeout: float = 60,
    keep_home: bool = False,
) -> Iterator[Server]:
    """Run `fabriek up` on a temporary home; stop it and every job process it started afterwards."""
    home = Path(tempfile.mkdtemp(prefix="fabriek-bench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FABRIEK_")}
    env.update(
        FABRIEK_HOME=str(home),
        FABRIEK_CONFIG=str(home / "client.json"),
        FABRIEK_CPUS=str(cpus),
        FABRIEK_MEMORY=memory,
        FABRIEK_GPUS="none",
    )
    if database_url:
        env["FABRIEK_DATABASE_URL"] = database_url
    env.update(extra_env or {})
    log_path = home / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [_fabriek_executable(), "up", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        # Same process group as the benchmark: killing the benchmark's group stops the server too.
        # (Its jobs still run in their own sessions; kill_job_processes ends them.)
    )
    server: Server | None = None
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"fabriek up exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
                )
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("fabriek up did not become healthy in time")
            time.sleep(0.1)
        token = json.loads((home / "client.json").read_text())["token"]
        server = Server(
            home=home,
            port=port,
            proc=proc,
            token=token,
            database="postgres" if database_url else "sqlite",
            log_path=log_path,
            env=env,
        )
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        kill_job_processes(home / "jobs")
        if keep_home:
            print(f"kept the server's home: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def job_body(
    name: str, argv: list[str], *, cpus: int = 1, memory_bytes: int = 64 * 1024**2
) -> dict[str, Any]:
    return {
        "name": name,
        "argv": argv,
        "cpus": cpus,
        "memory_bytes": memory_bytes,
        "gpus": 0,
        "time_limit_s": 3600,
        "project": "default",
        "env": {},
        "workdir": None,
    }


def common_options(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes besides its own: --wait-quiet and --json."""
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="before each measurement, wait up to S seconds for other load on the machine to end",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
