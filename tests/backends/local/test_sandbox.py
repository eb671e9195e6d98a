"""The sandbox's parts: the cgroup hierarchy found from mountinfo, bubblewrap's command line,
and the sandbox on a server that is not root (a laptop), run for real as another user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fabriek.backends.local import cgroups
from fabriek.backends.local.sandbox import ENV_SCRIPT, Isolation, Job, argv, gpu_devices, hidden
from fabriek.core.identity import Identity, Network

V1 = """\
30 23 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory
32 30 0:28 / /sys/fs/cgroup/pids rw,nosuid shared:11 - cgroup cgroup rw,pids
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:13 - cgroup2 cgroup2 rw
"""


def test_v1_controllers_are_found_where_mounted(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(V1)
    found, why = cgroups.find(str(tmp_path / "mountinfo"))
    assert why == "" and found is not None and found.version == 1
    assert found.mounts == {
        "memory": "/sys/fs/cgroup/memory",
        "pids": "/sys/fs/cgroup/pids",
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
    }


def test_v2_is_used_where_its_root_offers_the_controllers(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (tmp_path / "mountinfo").write_text(
        f"29 23 0:26 / {root} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    found, why = cgroups.find(str(tmp_path / "mountinfo"))
    assert why == "" and found == cgroups.Hierarchy(2, {"": str(root)})
    (root / "cgroup.controllers").write_text("cpu io\n")
    found, why = cgroups.find(str(tmp_path / "mountinfo"))
    assert found is None and "lacks the memory, pids controller(s)" in why


def test_no_hierarchy_says_which_controllers_are_missing(tmp_path: Path) -> None:
    (tmp_path / "mountinfo").write_text(V1.splitlines()[1] + "\n")
    found, why = cgroups.find(str(tmp_path / "mountinfo"))
    assert (
        found is None and why == "no cgroup hierarchy with the pids, cpu controller(s) is mounted"
    )


def test_cgroup_names_differ_between_homes() -> None:
    assert cgroups.key_for("/a/jobs/1-5") != cgroups.key_for("/b/jobs/1-5")
    assert cgroups.key_for("/a/jobs/1-5").startswith("job-1-5-")


ROOT = Isolation("/usr/bin/bwrap", "/usr/bin/setpriv", True, None)
USER = Isolation("/usr/bin/bwrap", None, False, None)


def _job(**changes: object) -> Job:
    fields: dict[str, object] = {
        "job_id": 7,
        "work": "/srv/fab/jobs/7/work",
        "output": "/srv/fab/jobs/7/output",
        "network": Network.HOST,
        "identity": Identity(200001, 200001, "alpha"),
    }
    return Job(**{**fields, **changes})  # type: ignore[arg-type]


def _pairs(line: list[str], option: str) -> list[str]:
    return [line[i + 1] for i, word in enumerate(line) if word == option]


def test_as_root_the_job_runs_through_setpriv_as_its_project() -> None:
    line = argv(ROOT, _job())
    end = line.index("--")
    assert "--unshare-user" not in line[:end] and "--unshare-pid" in line[:end]
    assert line[end + 1 : end + 4] == ["/usr/bin/setpriv", "--reuid", "200001"]
    assert {"--clear-groups", "--bounding-set=-all", "--no-new-privs"} <= set(line[end:])
    # The job's environment reaches only the job (a shell, already the project's uid, reads it):
    # bubblewrap and setpriv, root both, never see its LD_PRELOAD (test_attacks.py tries it).
    assert line[-5:] == ["--", "/bin/sh", "-c", ENV_SCRIPT, "fabriek-job"]
    assert line.count("--") == 2 and "--ro-bind-data" in line
    # Its own directories read-write, nothing of the server's home or other users' files.
    assert _pairs(line, "--bind") == ["/srv/fab/jobs/7/work", "/srv/fab/jobs/7/output"]
    mounted = set(_pairs(line, "--ro-bind")) | set(_pairs(line, "--ro-bind-try"))
    assert not mounted & {"/", "/home", "/root", "/run", "/var", "/srv", "/srv/fab"}
    assert {"/tmp", "/var/tmp", "/dev/shm", "/sys/fs/cgroup"} <= set(_pairs(line, "--tmpfs"))


def test_unprivileged_the_sandbox_has_its_own_user_namespace_and_no_nested_one() -> None:
    line = argv(USER, _job())
    assert "--unshare-user" in line and "--disable-userns" in line
    assert "setpriv" not in " ".join(line)


@pytest.mark.parametrize(
    ("network", "isolation", "unshares"),
    [
        (Network.HOST, ROOT, False),
        (Network.LOOPBACK, ROOT, True),
        (Network.NONE, ROOT, False),  # the supervisor's empty namespace (nothing up), not bwrap's
        (Network.NONE, USER, True),  # unprivileged: bwrap's, with loopback
    ],
)
def test_network_namespaces(network: Network, isolation: Isolation, unshares: bool) -> None:
    assert ("--unshare-net" in argv(isolation, _job(network=network))) == unshares


def test_a_home_inside_a_read_only_path_is_hidden(tmp_path: Path) -> None:
    home = Path("/opt/fabriek-home")
    assert hidden(home, ROOT) == ("/opt/fabriek-home",)
    assert hidden(tmp_path, ROOT) == ()
    line = argv(ROOT, _job(hide=("/opt/fabriek-home",)))
    assert "/opt/fabriek-home" in _pairs(line, "--tmpfs")


def test_only_the_jobs_own_gpu_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert gpu_devices((1,), str(tmp_path)) == (
        f"{tmp_path}/nvidia1",
        f"{tmp_path}/nvidiactl",
        f"{tmp_path}/nvidia-uvm",
    )
    assert gpu_devices((), str(tmp_path)) == ()


UNPRIVILEGED_RUN = """
import json, sys, time
from pathlib import Path
from fabriek.backends.base import LaunchSpec, Phase
from fabriek.backends.local.backend import LocalBackend
from fabriek.core.identity import Identity, Network
from fabriek.core.jobs import Resources

home = Path(sys.argv[1])
backend = LocalBackend(jobs_dir=home / "jobs", resources=Resources(1, 1 << 30), gpus=[],
                       kill_grace_seconds=1, metering=False)
script = "id -u; ls /proc | grep -c '^[0-9]'; ls " + sys.argv[1] + " 2>&1 || true"
spec = LaunchSpec(job_id=1, name="t", argv=["sh", "-c", script], env={},
                  resources=Resources(1, 256 << 20), gpu_ids=(), time_limit_s=30,
                  workdir_archive=None, identity=Identity(200050, 200050, "p"),
                  network=Network.NONE)
handle = backend.submit(spec)
deadline = time.monotonic() + 30
while (seen := backend.poll({1: handle})[1]).phase not in (Phase.FINISHED, Phase.LOST):
    assert time.monotonic() < deadline, "the job did not end"
    time.sleep(0.05)
out = (Path(handle["dir"]) / "stdout.log").read_text()
print(json.dumps({"describe": backend.isolation.describe(), "outcome": str(seen.outcome),
                  "stdout": out}))
"""


def test_a_server_that_is_not_root_still_sandboxes_its_jobs() -> None:
    """As on a laptop: the server runs as an ordinary user; its jobs run sandboxed, as that
    user (it cannot switch), and see nothing of its home and none of its processes."""
    assert os.geteuid() == 0, "this test runs the server as another user: it needs root"
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    home = Path(tempfile.mkdtemp(prefix="fabriek-laptop-"))
    try:
        os.chown(home, 4242, 4242)
        (home / "fabriek.db").write_text("the server's database")
        import fabriek

        # An interpreter that user may run (this one may live under /root), and a copy of our
        # package it may read (the checkout may lie in a directory only root enters); the local
        # backend needs nothing beyond the standard library.
        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        assert os.access(python, os.X_OK), f"{python} is needed to run a server as another user"
        code = home / "code"
        shutil.copytree(Path(fabriek.__file__).resolve().parent, code / "fabriek")
        as_user = [setpriv, "--reuid", "4242", "--regid", "4242", "--clear-groups"]
        run = subprocess.run(
            [*as_user, python, "-c", UNPRIVILEGED_RUN, str(home)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), "HOME": str(home)},
            check=False,
        )
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout.splitlines()[-1])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert "not root: one identity for every project" in result["describe"]
    assert "limits only accounted" in result["describe"]
    assert result["outcome"] == "succeeded"
    uid, processes, listing = result["stdout"].split("\n", 2)
    assert uid == "4242"  # the server's user: it cannot switch to the project's
    assert int(processes) <= 4  # bubblewrap's init, its sh, ls and grep: none of the machine's
    # Of the server's home it sees only the directories its own work and output lie under.
    assert listing.split() == ["jobs"]  # not its code, not fabriek.db


def test_a_read_only_path_under_tmp_is_seen_over_the_private_tmp(tmp_path: Path) -> None:
    """A checkout (and its virtual environment, the Python jobs run) may live in /tmp: bound
    after the job's private /tmp, not hidden under it."""
    from fabriek.backends.base import LaunchSpec, Phase
    from fabriek.backends.local.backend import LocalBackend
    from fabriek.core.jobs import Resources
    from tests.helpers import wait_for

    software = Path(tempfile.mkdtemp(prefix="fabriek-venv-", dir="/tmp"))
    try:
        software.chmod(0o755)
        (software / "tool.txt").write_text("the site's tool\n")
        backend = LocalBackend(
            jobs_dir=tmp_path / "jobs",
            resources=Resources(1, 1 << 30),
            gpus=[],
            kill_grace_seconds=1,
            metering=False,
            sandbox_ro_paths=(str(software),),
        )
        spec = LaunchSpec(
            job_id=1,
            name="t",
            argv=["sh", "-c", f"cat {software}/tool.txt; ls /tmp"],
            env={},
            resources=Resources(1, 256 << 20),
            gpu_ids=(),
            time_limit_s=30,
            workdir_archive=None,
            identity=Identity(200051, 200051, "p"),
        )
        handle = backend.submit(spec)
        seen = wait_for(lambda: (o := backend.poll({1: handle})[1]).phase == Phase.FINISHED and o)
        out = (Path(handle["dir"]) / "stdout.log").read_text()
        assert seen.exit_code == 0, (Path(handle["dir"]) / "stderr.log").read_text()
        # The tool, and of /tmp only the way to it (and to the job's own directories).
        assert out.startswith("the site's tool\n")
        assert software.name in out.split()
    finally:
        shutil.rmtree(software, ignore_errors=True)
