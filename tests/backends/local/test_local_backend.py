"""The local backend against real processes: launch, exit codes, limits, cancel, crash and adoption."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest

from fabriek.backends.base import LaunchSpec, Observation, Phase
from fabriek.backends.local.backend import LocalBackend
from fabriek.backends.local.cgroups import key_for
from fabriek.backends.local.gpus import FakeInventory, inventory_from_setting
from fabriek.backends.local.shim import proc_start_ticks
from fabriek.core.jobs import JobState, Resources
from tests.archives import file_entry, make_archive, make_many
from tests.helpers import wait_for

G = 2**30


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(2, 4 * G),
        gpus=FakeInventory(2).detect(),
        kill_grace_seconds=0.5,
    )


def make_spec(
    job_id: int,
    argv: list[str],
    *,
    time_limit_s: int = 60,
    gpu_ids: tuple[int, ...] = (),
    workdir: Path | None = None,
    env: dict[str, str] | None = None,
) -> LaunchSpec:
    return LaunchSpec(
        job_id=job_id,
        name=f"job{job_id}",
        argv=argv,
        env=env or {},
        resources=Resources(1, G, len(gpu_ids)),
        gpu_ids=gpu_ids,
        time_limit_s=time_limit_s,
        workdir_archive=workdir,
    )


def finished(backend: LocalBackend, job_id: int, timeout: float = 20) -> Observation:
    handle = {"dir": str(backend.job_dir(job_id))}

    def done() -> Observation | None:
        seen = backend.poll({job_id: handle})[job_id]
        return seen if seen.phase in (Phase.FINISHED, Phase.LOST) else None

    return wait_for(done, timeout=timeout, what=f"job {job_id} to finish")


def test_success_records_exit_usage_and_output(backend: LocalBackend) -> None:
    code = "import os; print('hi'); open(os.environ['FABRIEK_OUTPUT_DIR'] + '/r.txt', 'w').write('x'); x = bytearray(60 * 2**20); sum(range(3_000_000))"
    backend.submit(make_spec(1, ["python3", "-c", code]))
    seen = finished(backend, 1)
    assert seen.outcome == JobState.SUCCEEDED and seen.exit_code == 0
    assert seen.started_at is not None and seen.finished_at is not None
    assert seen.usage is not None
    assert seen.usage.cpu_s > 0.01
    assert seen.usage.max_rss_bytes > 60 * 2**20  # the bytearray was really held
    assert 0 < seen.usage.wall_s < 20
    assert (backend.job_dir(1) / "stdout.log").read_text() == "hi\n"
    assert (backend.job_dir(1) / "output" / "r.txt").read_text() == "x"


def test_failure_keeps_the_exit_code(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["sh", "-c", "echo oops >&2; exit 3"]))
    seen = finished(backend, 1)
    assert (seen.outcome, seen.exit_code, seen.signal) == (JobState.FAILED, 3, None)
    assert (backend.job_dir(1) / "stderr.log").read_text() == "oops\n"
    assert (backend.job_dir(1) / "stdout.log").read_text() == ""


def test_missing_command_fails_clearly(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["no-such-command-fabriek"]))
    seen = finished(backend, 1)
    assert seen.outcome == JobState.FAILED and seen.exit_code == 127
    assert "cannot start" in (seen.reason or "")


def test_time_limit_terms_then_kills(backend: LocalBackend) -> None:
    # The job ignores SIGTERM, so only SIGKILL after the grace period ends it.
    backend.submit(
        make_spec(1, ["sh", "-c", "trap '' TERM; echo started; sleep 30"], time_limit_s=1)
    )
    seen = finished(backend, 1)
    assert seen.outcome == JobState.TIMED_OUT
    assert seen.signal == signal.SIGKILL
    assert seen.usage is not None and 1.4 <= seen.usage.wall_s < 5


def test_cancel_sends_sigterm_to_the_whole_group(backend: LocalBackend) -> None:
    # A unique argument finds the child from outside (in a sandbox it has a pid of its own).
    marker = backend.job_dir(1) / "output" / "child"
    script = "sleep 60.0417 & echo started > $FABRIEK_OUTPUT_DIR/child; wait"
    backend.submit(make_spec(1, ["sh", "-c", script]))
    wait_for(lambda: marker.exists() and marker.read_text().strip(), what="the child to start")
    assert processes_with("60.0417")
    handle = {"dir": str(backend.job_dir(1))}
    backend.cancel(1, handle)
    backend.cancel(1, handle)  # idempotent
    seen = finished(backend, 1)
    assert seen.outcome == JobState.CANCELLED
    wait_for(lambda: not processes_with("60.0417"), what="the background child to be gone")
    backend.cancel(1, handle)  # a finished job is left alone


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def processes_with(argument: str) -> list[int]:
    """Live processes of this machine with `argument` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] != "Z" and argument.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_submit_is_idempotent(backend: LocalBackend) -> None:
    spec = make_spec(1, ["sh", "-c", "echo run >> $FABRIEK_OUTPUT_DIR/runs"])
    first = backend.submit(spec)
    second = backend.submit(spec)  # as after a crash before the handle was recorded
    assert first == second
    finished(backend, 1)
    assert (backend.job_dir(1) / "output" / "runs").read_text() == "run\n"


def test_gpus_are_passed_as_cuda_visible_devices(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], gpu_ids=(1,)))
    backend.submit(make_spec(2, ["sh", "-c", "echo [$CUDA_VISIBLE_DEVICES]"]))
    finished(backend, 1)
    finished(backend, 2)
    assert (backend.job_dir(1) / "stdout.log").read_text() == "GPU-fake-0001\n"
    assert (backend.job_dir(2) / "stdout.log").read_text() == "[]\n"  # no GPU asked, none visible


def test_workdir_is_unpacked_into_a_fresh_copy(backend: LocalBackend, tmp_path: Path) -> None:
    archive = tmp_path / "wd.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"print(open('data.txt').read())"
        for name, content in (("main.py", data), ("data.txt", b"payload")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    for job_id in (1, 2):
        backend.submit(make_spec(job_id, ["python3", "main.py"], workdir=archive))
    for job_id in (1, 2):
        assert finished(backend, job_id).outcome == JobState.SUCCEEDED
        assert (backend.job_dir(job_id) / "stdout.log").read_text() == "payload\n"
    (backend.job_dir(1) / "work" / "data.txt").write_text("changed by job 1")
    assert (backend.job_dir(2) / "work" / "data.txt").read_text() == "payload"  # copies, not shared


def test_unsafe_workdir_is_refused(backend: LocalBackend, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    backend.submit(make_spec(1, ["true"], workdir=archive))
    seen = finished(backend, 1)
    # Its time started before the unpacking, which is part of the job (issue 21, item 5).
    assert seen.outcome == JobState.FAILED and seen.started_at is not None
    assert "could not unpack the workdir" in (seen.reason or "")
    assert not (backend.jobs_dir / "1" / "escape.txt").exists()


@pytest.fixture(scope="module")
def slow_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 empty files: seconds to unpack (the issue's 200,000 took 91 s)."""
    return make_many(tmp_path_factory.mktemp("slow") / "many.tar.gz", 60_000)


def test_a_cancel_stops_the_unpacking_promptly(backend: LocalBackend, slow_workdir: Path) -> None:
    """Issue 21, item 5: the unpacking ran before the job's time started, and a cancel waited for
    it. Now the job runs (its time counting) from before the unpacking, which a cancel stops."""
    backend.submit(make_spec(1, ["true"], workdir=slow_workdir))
    handle = {"dir": str(backend.job_dir(1))}
    seen = wait_for(
        lambda: backend.poll({1: handle})[1].phase == Phase.RUNNING and backend.poll({1: handle}),
        what="the job to count as running while it unpacks",
    )[1]
    assert seen.started_at is not None and not (backend.job_dir(1) / "stdout.log").exists()
    asked = time.monotonic()
    backend.cancel(1, handle)
    seen = finished(backend, 1)
    assert time.monotonic() - asked < 3
    assert (seen.outcome, seen.reason) == (
        JobState.CANCELLED,
        "cancelled while its workdir was unpacked",
    )
    assert seen.usage is not None and seen.usage.wall_s > 0  # charged for the time it took
    assert len(os.listdir(backend.job_dir(1) / "work")) < 60_000


def test_the_unpacking_counts_within_the_time_limit(
    backend: LocalBackend, slow_workdir: Path
) -> None:
    backend.submit(make_spec(1, ["true"], time_limit_s=1, workdir=slow_workdir))
    seen = finished(backend, 1)
    assert seen.outcome == JobState.TIMED_OUT
    assert seen.reason == "ran past its time limit of 1s while its workdir was unpacked"
    assert seen.usage is not None and 1 <= seen.usage.wall_s < 3
    assert seen.started_at is not None
    assert not (backend.job_dir(1) / "stdout.log").exists()  # the command never started


def test_an_archive_the_upload_would_refuse_fails_with_a_short_reason(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """Item 7: a 1 MiB PAX name failed the job with that name as its stored reason."""
    archive = make_archive(tmp_path / "w.tar.gz", [file_entry("n" * 2**20)])
    backend.submit(make_spec(1, ["true"], workdir=archive))
    seen = finished(backend, 1)
    assert seen.outcome == JobState.FAILED and seen.reason is not None
    assert seen.reason.startswith("could not unpack the workdir: the workdir archive holds a name")
    assert len(seen.reason) <= 300


def test_a_dead_supervisor_is_lost_and_its_job_ended(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["sleep", "60"]))
    job_dir = backend.job_dir(1)
    started = wait_for(
        lambda: (
            (job_dir / "started.json").exists()
            and json.loads((job_dir / "started.json").read_text())
        )
    )
    shim_pid = json.loads((job_dir / "shim.json").read_text())["pid"]
    os.kill(shim_pid, signal.SIGKILL)
    seen = finished(backend, 1)
    assert seen.phase == Phase.LOST
    wait_for(lambda: not _alive(started["pid"]), what="the orphaned job to be killed")
    cgroup = backend.isolation.cgroup
    if cgroup is not None:  # and its cgroup removed, in every hierarchy
        key = key_for(str(job_dir))
        wait_for(
            lambda: not any((Path(m) / "fabriek" / key).exists() for m in cgroup.mounts.values())
        )


def test_start_ticks_identify_a_process() -> None:
    import subprocess

    mine = proc_start_ticks(os.getpid())
    assert isinstance(mine, int) and mine == proc_start_ticks(os.getpid())
    child = subprocess.Popen(["sleep", "0.2"])
    theirs = proc_start_ticks(child.pid)
    child.wait()
    assert isinstance(theirs, int) and theirs >= mine
    assert proc_start_ticks(2**22 + 7) is None


@pytest.mark.parametrize("sandbox", [True, False], ids=["sandboxed", "plain"])
def test_a_result_forged_by_the_running_job_is_ignored(tmp_path: Path, sandbox: bool) -> None:
    backend = LocalBackend(
        jobs_dir=tmp_path / "jobs",
        resources=Resources(2, 4 * G),
        gpus=[],
        kill_grace_seconds=0.5,
        sandbox=sandbox,
    )
    forged = '{"outcome": "succeeded", "exit_code": 0}'
    # The job forges its result, then runs until the test lets it end: a slow machine can
    # neither end it early nor catch it before its supervisor has recorded the start. In a
    # sandbox it cannot even write there: its job directory is not in its view.
    script = (
        f"echo '{forged}' > ../result.json && echo forged > $FABRIEK_OUTPUT_DIR/forged; "
        "touch $FABRIEK_OUTPUT_DIR/tried; "
        "while [ ! -e $FABRIEK_OUTPUT_DIR/go ]; do sleep 0.05; done; exit 5"
    )
    backend.submit(make_spec(1, ["sh", "-c", script]))
    handle = {"dir": str(backend.job_dir(1))}
    output = backend.job_dir(1) / "output"
    wait_for(lambda: (output / "tried").exists(), what="the forging")
    assert (output / "forged").exists() == (not sandbox)
    wait_for(lambda: backend.poll({1: handle})[1].phase != Phase.STARTING, what="the start")
    assert backend.poll({1: handle})[1].phase == Phase.RUNNING
    (output / "go").touch()
    seen = finished(backend, 1)
    assert (seen.outcome, seen.exit_code) == (JobState.FAILED, 5)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "[]",
        '{"outcome": "bogus"}',
        '{"outcome": "succeeded", "usage": {"wall_s": "x"}}',
    ],
)
def test_a_torn_or_bad_result_is_lost_not_a_crash(backend: LocalBackend, content: str) -> None:
    job_dir = backend.job_dir(1)
    job_dir.mkdir(parents=True)
    (job_dir / "launched").touch()
    (job_dir / "started.json").write_text(content)
    (job_dir / "result.json").write_text(content)
    seen = backend.poll({1: {"dir": str(job_dir)}})[1]
    assert seen.phase == Phase.LOST


def test_gpu_setting_parsing() -> None:
    assert len(inventory_from_setting("fake:3:h100").detect()) == 3
    assert inventory_from_setting("none").detect() == []
    with pytest.raises(ValueError, match="FABRIEK_GPUS"):
        inventory_from_setting("lots")


def test_launcher_restarts_after_its_fork_server_died(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["true"]))
    assert finished(backend, 1).outcome == JobState.SUCCEEDED
    proc = backend.launcher._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    backend.submit(make_spec(2, ["true"]))
    assert finished(backend, 2).outcome == JobState.SUCCEEDED
    assert backend.launcher._proc is not proc


def test_supervisors_outlive_the_launcher(backend: LocalBackend) -> None:
    backend.submit(make_spec(1, ["sleep", "1"]))
    backend.launcher.close()  # as when the server stops
    seen = finished(backend, 1)
    assert (
        seen.outcome == JobState.SUCCEEDED and seen.usage is not None and seen.usage.wall_s >= 0.9
    )


def test_same_id_from_another_database_is_a_new_job(backend: LocalBackend) -> None:
    """A database reset under an existing home must not adopt the old job's directory."""
    old = make_spec(1, ["sh", "-c", "echo old >> $FABRIEK_OUTPUT_DIR/runs"])
    backend.submit(LaunchSpec(**{**_fields(old), "instance": "111"}))
    new_argv = ["sh", "-c", "echo new >> $FABRIEK_OUTPUT_DIR/runs"]
    backend.submit(LaunchSpec(**{**_fields(old), "instance": "222", "argv": new_argv}))
    for instance in ("111", "222"):
        handle = {"dir": str(backend.job_dir(1, instance))}
        wait_for(lambda h=handle: backend.poll({1: h})[1].phase == Phase.FINISHED)  # type: ignore[misc]
    runs = [(backend.job_dir(1, i) / "output" / "runs").read_text() for i in ("111", "222")]
    assert runs == ["old\n", "new\n"]


def _fields(spec: LaunchSpec) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


def test_stdout_stderr_apart_with_an_index_and_old_combined_logs_readable(
    backend: LocalBackend,
) -> None:
    backend.submit(make_spec(1, ["sh", "-c", "echo a; echo e >&2; sleep 1.5; echo b"]))
    finished(backend, 1)
    handle = {"dir": str(backend.job_dir(1))}
    stdout, stderr = backend.log_path(1, handle), backend.log_path(1, handle, "stderr")
    assert stdout is not None and stdout.read_text() == "a\nb\n"
    assert stderr is not None and stderr.read_text() == "e\n"
    index = [line.split() for line in (backend.job_dir(1) / "log.index").read_text().splitlines()]
    assert [(int(o), int(e)) for _, o, e in index][-2:] == [(2, 2), (4, 2)]
    assert float(index[-1][0]) - float(index[-2][0]) >= 1  # b came later, and says when
    old = backend.job_dir(2)
    old.mkdir()
    (old / "output.log").write_text("both\n")  # a job supervised before they were kept apart
    assert backend.log_path(2, {"dir": str(old)}) == old / "output.log"
    assert backend.log_path(2, {"dir": str(old)}, "stderr") is None
