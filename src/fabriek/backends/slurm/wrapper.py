"""What a fabriek job's Slurm batch script runs, on the job's first node: `python wrapper.py batch
SPEC`, and for a multi-node job, through `srun`, `python wrapper.py task SPEC` once per node.

Standard library only, and plain enough for any Python from 3.9 on a compute node: the backend copies
this file to the cluster's shared directory, so a node needs a Python, not fabriek. Where the spec
names a path from which `fabriek.metering` imports (the shared install of fabriek), each node's part
also meters the energy its command used (NVML for the GPUs Slurm gave it, RAPL or an estimate for
CPU and memory), sampled over the run into `nodes/NODE/energy.jsonl`, totals in `energy.json`.

The job's command, arguments and environment come from SPEC (JSON, written by the backend) and are
handed to the operating system as a list: no shell ever sees them. The batch part

- records `started.json` (when, on which node) in the job's directory,
- unpacks the workdir archive into the job's `work/`, as the job's first step (in its time: Slurm's
  time limit and a cancel stop it), with the check the upload passed: the spec names the
  unpacker, fabriek's core/workdir_archive.py copied beside this file, which extracts only what
  it checked,
- runs the command in the workdir, directly (one node) or as one task per node through `srun`,
  with what PyTorch's `torch.distributed` and `torchrun` read set for every task: MASTER_ADDR,
  MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, NODE_RANK (plus FABRIEK_NODE_RANK, FABRIEK_NNODES),
  and GLOO_SOCKET_IFNAME: the interface on the way to MASTER_ADDR,
- passes SIGTERM on to it (Slurm signals a cancelled job's steps itself, too) and meters it,
- notes the sizes of the job's `stdout` and `stderr` (Slurm writes them) in `log.index` every
  second or so while they grow, for `fabriek logs --since`,
- writes `result.json` atomically when it has ended (exit code or signal, wall and CPU time, peak
  memory of what this node saw), and exits with the command's status, so that Slurm's own record
  (COMPLETED or FAILED, sacct's ExitCode) says the same.
"""

import json
import os
import resource
import select
import signal
import socket
import stat
import subprocess
import sys
import time


def _write_json(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _job_env(spec, environ):
    """The job's environment: Slurm's (SLURM_*, the node's PATH), the user's variables, then
    fabriek's (which the user cannot override)."""
    env = dict(environ)
    env.update(spec["env"])
    env.update(spec["fabriek_env"])
    env["FABRIEK_OUTPUT_DIR"] = spec["output_dir"]
    return env


def _distributed_env(
    env, user_keys, *, rank, local_rank, world_size, node_rank, nnodes, master_addr, port
):
    """What torch.distributed's env:// rendezvous (and torchrun, given --nnodes/--node-rank)
    reads. A variable the user set explicitly is kept."""
    for key, value in (
        ("MASTER_ADDR", master_addr),
        ("MASTER_PORT", str(port)),
        ("WORLD_SIZE", str(world_size)),
        ("RANK", str(rank)),
        ("LOCAL_RANK", str(local_rank)),
        ("NODE_RANK", str(node_rank)),
    ):
        if key not in user_keys:
            env[key] = value
    env["FABRIEK_NODE_RANK"] = str(node_rank)
    env["FABRIEK_NNODES"] = str(nnodes)
    return env


def interface_towards(address):
    """The name of this node's network interface on the way to `address` (IPv4), or None.
    Gloo otherwise binds to whatever this node's host name resolves to, which on a node with
    several networks (or none in DNS) may be an address the other nodes cannot reach."""
    import fcntl
    import struct

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # no packet is sent: this only picks the route
            local = probe.getsockname()[0]
            for _, name in socket.if_nameindex():
                try:
                    packed = fcntl.ioctl(
                        probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode())
                    )  # SIOCGIFADDR
                except OSError:
                    continue
                if socket.inet_ntoa(packed[20:24]) == local:
                    return name
    except OSError:
        pass
    return None


def master_port(slurm_job_id):
    """A port for the job's rendezvous, the same on every node, different for jobs that share a
    node (a plain function of the Slurm job id, in 20000-59999)."""
    return 20000 + int(slurm_job_id) % 40000


def batch(spec_path):
    forward = _Forward()
    with open(spec_path) as f:
        spec = json.load(f)
    job_dir = os.path.dirname(spec_path)
    nodes = int(spec["nodes"])
    slurm_id = os.environ.get("SLURM_JOB_ID", "0")
    env = _job_env(spec, os.environ)
    for directory in (spec["workdir"], spec["output_dir"]):
        os.makedirs(directory, exist_ok=True)
    began = time.time()
    _write_json(
        os.path.join(job_dir, "started.json"),
        {"started_at": began, "node": socket.gethostname(), "slurm_job_id": slurm_id},
    )
    unpack_cpu = time.process_time()
    stopped = _unpack(spec, forward) if spec.get("workdir_archive") else None
    unpack_cpu = time.process_time() - unpack_cpu
    if stopped is not None:
        code, reason = stopped
        ended = time.time()
        _write_json(
            os.path.join(job_dir, "result.json"),
            {
                "exit_code": code if code >= 0 else None,
                "signal": -code if code < 0 else None,
                "started_at": began,
                "finished_at": ended,
                "wall_s": ended - began,
                "cpu_s": unpack_cpu,
                "max_rss_bytes": 0,
                "node": socket.gethostname(),
                "reason": reason,
            },
        )
        return _exit_like(code)
    if nodes == 1:
        env = _distributed_env(
            env,
            spec["env"],
            rank=0,
            local_rank=0,
            world_size=1,
            node_rank=0,
            nnodes=1,
            master_addr="127.0.0.1",
            port=master_port(slurm_id),
        )
        argv, cwd = spec["argv"], spec["workdir"]
    else:
        # One task per node; each becomes the job's command (`task` below). srun passes this
        # environment on (--export=ALL), and the batch job's allocation says where.
        argv = [
            spec["srun"],
            "--export=ALL",
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            "--kill-on-bad-exit=1",
            sys.executable,
            os.path.abspath(__file__),
            "task",
            spec_path,
        ]
        cwd = spec["workdir"]
    try:
        child = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)
        forward.started(child.pid)
    except OSError as exc:
        sys.stderr.write(f"fabriek: cannot start {argv[0]!r}: {exc.strerror}\n")
        _write_json(
            os.path.join(job_dir, "result.json"),
            {
                "exit_code": 127,
                "signal": None,
                "started_at": began,
                "finished_at": time.time(),
                "reason": f"cannot start the command: {exc.strerror}",
            },
        )
        return 127
    # One node: this part meters it. Several: each task meters its own node (`task`).
    meter = _start_meter(spec, child.pid, job_dir) if nodes == 1 else None
    code, usage = _wait(child, meter, job_dir, index=_LogIndex(job_dir))
    ended = time.time()
    result = {
        "exit_code": code if code >= 0 else None,
        "signal": -code if code < 0 else None,
        "started_at": began,
        "finished_at": ended,
        "wall_s": ended - began,
        "cpu_s": usage.ru_utime + usage.ru_stime + unpack_cpu,
        "max_rss_bytes": usage.ru_maxrss * 1024,
        "node": socket.gethostname(),
    }
    _write_json(os.path.join(job_dir, "result.json"), result)
    return _exit_like(code)


class _Stopped(Exception):
    pass


def _unpack(spec, forward):
    """Unpack the workdir archive into the job's workdir with the unpacker the spec names. Returns
    None, or (exit status, reason) where the job must end here: a SIGTERM or SIGINT came (a
    cancel, Slurm's time limit; noticed before each entry), or the archive cannot be unpacked."""
    try:
        archives = _load_module("fabriek_workdir_archive", spec["unpacker"])
        limits = archives.Limits(*spec["workdir_limits"])
    except Exception as exc:
        return 1, f"could not load the workdir unpacker: {exc!r}"[:REASON_MAX]

    def progress():
        stop = [s for s in forward.early if s in (signal.SIGTERM, signal.SIGINT)]
        if stop:
            raise _Stopped(stop[0])

    try:
        archives.unpack(spec["workdir_archive"], spec["workdir"], limits, progress=progress)
    except _Stopped as stop:
        return -stop.args[0], "stopped while its workdir was unpacked"
    except Exception as exc:  # the unpacker's refusal, or the disk's
        return 1, f"could not unpack the workdir: {exc}"[:REASON_MAX]
    return None


def _load_module(name, path):
    import importlib.util

    found = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(found)
    sys.modules[name] = module  # dataclasses look their module up there
    found.loader.exec_module(module)
    return module


REASON_MAX = 300  # characters of a reason in result.json (a job's stored reason)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class _Forward:
    """Signals to this wrapper go on to the command's process group; those that come before the
    command has started are kept and sent once it has. Installed first thing: a cancel that came
    after the command started but before the wrapper had set its handlers (it was starting the
    meter) killed the wrapper by SIGTERM's default action, and with it the job, before the
    command's own handler could run (the Slurm cancel test, on a loaded machine)."""

    def __init__(self):
        self.pid = None
        self.early = []
        for signum in FORWARDED:
            signal.signal(signum, self._on)

    def _on(self, signum, _frame):
        if self.pid is None:
            self.early.append(signum)
            return
        try:
            os.killpg(self.pid, signum)
        except OSError:
            pass

    def started(self, pid):
        self.pid = pid
        for signum in self.early:
            self._on(signum, None)
        self.early.clear()


class _LogIndex:
    """Appends `UNIX_TIME STDOUT_BYTES STDERR_BYTES` to JOB_DIR/log.index when the logs have
    grown (the same file as the local backend's supervisor writes)."""

    def __init__(self, job_dir):
        self.dir = job_dir
        self.last = (0, 0)

    def note(self):
        sizes = tuple(_size(os.path.join(self.dir, name)) for name in ("stdout", "stderr"))
        if sizes != self.last:
            self.last = sizes
            line = f"{time.time():.3f} {sizes[0]} {sizes[1]}\n".encode()
            append_index(os.path.join(self.dir, "log.index"), line)


def append_index(path, line):
    """Append `line` to the job-writable log index, unless the job replaced it: a link is not
    followed, and a FIFO (opened without blocking) fails or is not written, where opening it
    for appending blocked the supervisor for ever (and the job's time limit with it)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.write(fd, line)
    except OSError:
        pass
    finally:
        os.close(fd)


def _size(path):
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _wait(child, meter, job_dir, index=None):
    """Wait for the command (signals reach its process group: `_Forward`), sampling the meter
    and noting the logs' sizes in `index`; then the node's energy totals go to
    nodes/NODE/energy.json. Returns the exit status (as subprocess: negative for a signal) and
    the resource usage."""
    if meter is not None or index is not None:
        pidfd = os.pidfd_open(child.pid)
        try:
            while True:
                if index is not None:
                    index.note()
                timeout = 1.0 if meter is None else min(1.0, meter.due())
                if select.select([pidfd], [], [], timeout)[0]:
                    break
                if meter is not None and meter.due() <= 0:
                    try:
                        meter.sample()
                    except Exception as exc:
                        sys.stderr.write(f"fabriek: energy metering stopped: {exc!r}\n")
                        meter = None
        finally:
            os.close(pidfd)
        if index is not None:
            index.note()
        if meter is not None:  # the last interval, while the group can still be read
            try:
                meter.cpu.sample()
            except Exception as exc:
                sys.stderr.write(f"fabriek: the last CPU sample failed: {exc!r}\n")
    _, status, usage = os.wait4(child.pid, 0)
    if meter is not None:
        try:
            totals = meter.finish(cpu_seconds=usage.ru_utime + usage.ru_stime)
            _write_json(os.path.join(_node_dir(job_dir), "energy.json"), totals)
        except Exception as exc:
            sys.stderr.write(f"fabriek: the last energy reading failed: {exc!r}\n")
    return os.waitstatus_to_exitcode(status), usage


def _exit_like(code):
    """Exit as the command did: with its code, or by its signal."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _node_dir(job_dir):
    path = os.path.join(job_dir, "nodes", os.environ.get("SLURMD_NODENAME") or socket.gethostname())
    os.makedirs(path, exist_ok=True)
    return path


def _visible_gpus(count):
    """The indices of the GPUs Slurm gave the job on this node (as NVML numbers them)."""
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        value = os.environ.get(key, "")
        if value and all(part.strip().isdigit() for part in value.split(",")):
            return [int(part) for part in value.split(",")]
    return list(range(count))


def _start_meter(spec, pgid, job_dir):
    """This node's energy meter for the command's process group (fabriek.metering, from the
    path the spec names), or None where fabriek is not importable here: metering trouble is
    reported in the job's log and never stops the job."""
    orders = spec.get("meter")
    if not orders:
        return None
    try:
        sys.path[:0] = orders["sys_path"]
        from fabriek.metering.meter import Estimates, job_meter

        gpus = int(spec["fabriek_env"]["FABRIEK_GPUS"])
        return job_meter(
            _node_dir(job_dir),
            pgid=pgid,
            gpu_indices=_visible_gpus(gpus) if gpus else [],
            gpu_source=orders["gpu_source"],
            memory_bytes=int(orders["memory_bytes"]),
            sample_every_s=float(orders["sample_every_s"]),
            estimates=Estimates(**orders.get("estimates", {})),
        )
    except Exception as exc:
        sys.stderr.write(f"fabriek: energy metering off on this node: {exc!r}\n")
        return None


def task(spec_path):
    """One task of a multi-node job: the job's command on this node, with its rank set, and
    this node's energy meter."""
    forward = _Forward()
    with open(spec_path) as f:
        spec = json.load(f)
    env = _distributed_env(
        dict(os.environ),
        spec["env"],
        rank=int(os.environ["SLURM_PROCID"]),
        local_rank=int(os.environ.get("SLURM_LOCALID", "0")),
        world_size=int(os.environ["SLURM_NTASKS"]),
        node_rank=int(os.environ.get("SLURM_NODEID", "0")),
        nnodes=int(spec["nodes"]),
        # The node that runs the batch part launched the tasks: task 0 runs there.
        master_addr=os.environ.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1"),
        port=master_port(os.environ.get("SLURM_JOB_ID", "0")),
    )
    if "GLOO_SOCKET_IFNAME" not in spec["env"]:
        interface = interface_towards(env["MASTER_ADDR"])
        if interface:
            env["GLOO_SOCKET_IFNAME"] = interface
    argv = spec["argv"]
    try:
        child = subprocess.Popen(argv, env=env, cwd=spec["workdir"], start_new_session=True)
        forward.started(child.pid)
    except OSError as exc:
        sys.stderr.write(f"fabriek: cannot start {argv[0]!r}: {exc.strerror}\n")
        return 127
    job_dir = os.path.dirname(spec_path)
    code, _ = _wait(child, _start_meter(spec, child.pid, job_dir), job_dir)
    return _exit_like(code)


def main(argv):
    if len(argv) != 3 or argv[1] not in ("batch", "task"):
        sys.stderr.write("usage: wrapper.py batch|task SPEC\n")
        return 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    return batch(argv[2]) if argv[1] == "batch" else task(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
