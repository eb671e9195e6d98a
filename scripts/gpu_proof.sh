#!/usr/bin/env bash
# Proof on a machine with a real NVIDIA GPU that fabriek's local backend finds the GPUs through NVML,
# hands one to a job through CUDA_VISIBLE_DEVICES, never gives it to two jobs at once (a second
# 1-GPU job waits while the first runs) and records what each used (GPU-seconds), with a real
# PyTorch training job (examples/train_gpu.py). Ends with PASS/FAIL lines; exits 1 on any FAIL.
#
# On the GPU machine, from the repo root, with the wheels in .whl/ (see below):
#     bash scripts/gpu_proof.sh                 # output also in $OUT/gpu_proof.log
# Here, without a GPU (a fake GPU; the training falls back to the CPU):
#     GPU_PROOF_LOCAL=1 FABRIEK_GPUS=fake:1 PY=.venv/bin/python JOB_PY=/path/to/python-with-torch \
#         TRAIN_SECONDS=8 OUT=/tmp/gpuout bash scripts/gpu_proof.sh
#
# Settings (environment):
#   PY               Python that runs fabriek (default python3)
#   JOB_PY           Python with torch that runs the jobs (default: PY)
#   GPU_PROOF_LOCAL  1: install nothing; PY already has fabriek's dependencies
#   FABRIEK_GPUS     unset (NVML, as in production), or fake:N for a machine without GPUs
#   TRAIN_SECONDS    training time of each job (default 30)
#   OUT              where gpu_proof.log goes (default /tmp/gpu_proof_out)
#   SITE             where the wheels are installed (default /tmp/site)
#
# Wheels: .whl/*.whl are fabriek's dependencies that the GPU machine lacks; .whl/fallback/*.whl are
# newer versions of those it has, installed (into $SITE-fallback, ahead on PYTHONPATH) only when the
# machine's version does not satisfy a requirement, or when fabriek does not start without them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/gpu_proof_out}
mkdir -p "$OUT"

main() {
    cd "$REPO"
    export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-110}
    PY=$(command -v "${PY:-python3}")
    JOB_PY=$(command -v "${JOB_PY:-$PY}")
    TRAIN_SECONDS=${TRAIN_SECONDS:-30}
    [[ "$TRAIN_SECONDS" =~ ^[0-9]+$ ]] || { echo "TRAIN_SECONDS must be whole seconds"; exit 2; }
    WORK=$(mktemp -d /tmp/fabriek-gpu-proof.XXXXXX)
    export FABRIEK_HOME="$WORK/home" FABRIEK_CONFIG="$WORK/client.json"
    unset FABRIEK_URL FABRIEK_TOKEN
    SERVER_PID="" J1="" J2="" FAILED=1 SAMPLER_PID=""
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    T0=$SECONDS

    install_dependencies
    show_machine
    start_server
    run_jobs
    show_results
    step "checks"
    "$PY" "$WORK/checks.py" "$WORK"
    FAILED=0
    stop_server
}

step() { printf '\n==== [%3ss] %s\n' "$((SECONDS - T0))" "$*"; }
fab() { "$PY" -m fabriek.cli.main "$@"; }
json_field() { # the field of the JSON object on stdin; ? when there is none (no server, say)
    "$PY" -c 'import json, sys
try:
    print(json.load(sys.stdin)[sys.argv[1]])
except Exception:
    print("?")' "$1"
}

# --- dependencies --------------------------------------------------------------------------------
install_dependencies() {
    write_helpers
    if [[ "${GPU_PROOF_LOCAL:-}" == 1 ]]; then
        step "GPU_PROOF_LOCAL=1: using the packages of $PY, installing nothing"
        export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
    else
        SITE=${SITE:-/tmp/site}
        FALLBACK="$SITE-fallback"
        local wheels=(.whl/*.whl) unmet names
        step "installing ${#wheels[@]} wheels into $SITE"
        rm -rf "$SITE" "$FALLBACK"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
        export PYTHONPATH="$REPO/src:$FALLBACK:$SITE"
        for _ in 1 2 3; do
            unmet=$("$PY" "$WORK/reqcheck.py" pyproject.toml "$SITE" "$FALLBACK")
            [[ -z "$unmet" ]] && break
            mapfile -t names <<<"$unmet"
            install_fallbacks "${names[@]}"
        done
        if ! "$PY" "$WORK/smoke.py"; then
            echo "fabriek does not start with this machine's packages: installing all fallback wheels"
            install_fallbacks all
            "$PY" "$WORK/smoke.py"
        fi
    fi
    echo "PYTHONPATH=$PYTHONPATH"
}

install_fallbacks() {
    local wheels=() name found
    if [[ "$1" == all ]]; then
        wheels=(.whl/fallback/*.whl)
    else
        for name in "$@"; do
            found=(.whl/fallback/"${name//-/_}"-*.whl)
            if [[ -f "${found[0]}" ]]; then wheels+=("${found[0]}"); else echo "no fallback wheel for $name"; fi
        done
    fi
    [[ ${#wheels[@]} -eq 0 ]] && return 0
    echo "installing fallback wheels into $FALLBACK: ${wheels[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$FALLBACK" "${wheels[@]}"
}

# --- the machine ---------------------------------------------------------------------------------
show_machine() {
    step "the machine"
    uname -srm
    echo "fabriek runs on $("$PY" -V) ($PY); jobs run on $JOB_PY"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L
        nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv
    else
        echo "nvidia-smi: not on this machine"
    fi
    "$JOB_PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")'

    step "what fabriek's GPU inventory finds (FABRIEK_GPUS=${FABRIEK_GPUS:-<unset>: NVML})"
    "$PY" "$WORK/inventory.py" "$WORK/inventory.json"
}

# --- the server ----------------------------------------------------------------------------------
start_server() {
    PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    step "starting fabriek up on 127.0.0.1:$PORT, home $FABRIEK_HOME"
    "$PY" -m fabriek.cli.main up --host 127.0.0.1 --port "$PORT" --workers 1 \
        --home "$FABRIEK_HOME" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    "$PY" "$WORK/wait_ready.py" "http://127.0.0.1:$PORT/api/v1/health" "$FABRIEK_CONFIG" "$SERVER_PID"
    cat "$WORK/server.log"
}

stop_server() {
    [[ -z "$SERVER_PID" ]] && return 0
    step "stopping the server (pid $SERVER_PID)"
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "the server did not stop in 15s: SIGKILL"
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    echo "server stopped; its last log lines:"
    tail -n 5 "$WORK/server.log"
    SERVER_PID=""
}

cleanup() {
    local rc=$? job dir
    if [[ -n "${SAMPLER_PID:-}" ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    trap - EXIT INT TERM
    if [[ "$FAILED" == 1 ]]; then
        echo "!!! failed (exit $rc): cancelling the jobs, then stopping the server"
        for job in $J1 $J2; do fab cancel "$job" >/dev/null 2>&1 || true; done
        # The server may be gone already: the jobs' supervisors also end a job on this file.
        for dir in "$FABRIEK_HOME"/jobs/*/; do
            if [[ -f "$dir/launched" && ! -f "$dir/result.json" ]]; then touch "$dir/cancel"; fi
        done
        echo "--- server log:"
        tail -n 40 "$WORK/server.log" 2>/dev/null || true
    fi
    stop_server
    if [[ "$rc" == 0 ]]; then
        rm -rf "$WORK"
    else
        echo "kept $WORK for a look"
    fi
    step "done, exit $rc"
    exit "$rc"
}

# --- the jobs ------------------------------------------------------------------------------------
state_of() { fab status "$1" --json | json_field state; }

wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...: poll every second until COMMAND succeeds
    local limit=$1 what=$2 began=$SECONDS
    shift 2
    until "$@"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "the server is gone while waiting for: $what"
            return 1
        fi
        if ((SECONDS - began > limit)); then
            echo "gave up after ${limit}s waiting for: $what"
            return 1
        fi
        sleep 1
    done
}
job_is() { [[ "$(state_of "$1")" == "$2" ]]; }
job_left_pending() { ! job_is "$1" pending; }
job_ended() { [[ "$(state_of "$1")" =~ ^(succeeded|failed|cancelled|timed_out)$ ]]; }
job_training() { fab logs "$1" | grep "^training for" >/dev/null || job_ended "$1"; } # or failed early

run_jobs() {
    mkdir -p "$WORK/job/examples"
    cp examples/train_gpu.py "$WORK/job/examples/"
    local require=()
    if [[ -z "${FABRIEK_GPUS:-}" || "${FABRIEK_GPUS:-}" == nvml ]]; then
        require=(--env REQUIRE_CUDA=1) # on the real GPU a CPU fallback would prove nothing
    fi
    local args=(--parsable --gpus 1 --cpus 1 --mem 4G --time 5m --workdir "$WORK/job"
        --env "TRAIN_SECONDS=$TRAIN_SECONDS" --env PYTHONUNBUFFERED=1 "${require[@]}")
    if [[ ${#require[@]} -gt 0 ]]; then # an independent witness of the GPUs' energy
        "$PY" "$WORK/power.py" "$WORK/power.csv" &
        SAMPLER_PID=$!
    fi
    step "submitting two 1-GPU training jobs at once"
    J1=$(fab submit --name gpu-proof-1 "${args[@]}" -- "$JOB_PY" examples/train_gpu.py)
    J2=$(fab submit --name gpu-proof-2 "${args[@]}" -- "$JOB_PY" examples/train_gpu.py)
    echo "submitted jobs $J1 and $J2: fabriek submit ${args[*]} -- $JOB_PY examples/train_gpu.py"

    wait_until 120 "job $J1 to train" job_training "$J1"
    step "job $J1 trains; job $J2 must wait for the GPU"
    fab status "$J1" --json >"$WORK/j1-running.json"
    fab status "$J2" --json >"$WORK/j2-waiting.json"
    fab jobs
    echo
    fab status "$J2"
    echo
    if command -v nvidia-smi >/dev/null; then
        echo "nvidia-smi, processes on the GPU now:"
        nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv || true
        nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv || true
    fi

    wait_until $((TRAIN_SECONDS + 180)) "job $J1 to end" job_ended "$J1"
    wait_until 60 "job $J2 to leave pending" job_left_pending "$J2"
    step "job $J1 ended; job $J2 got the GPU"
    fab jobs
    wait_until $((TRAIN_SECONDS + 180)) "job $J2 to end" job_ended "$J2"
    if [[ -n "${SAMPLER_PID:-}" ]]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        echo "power sampler: $(wc -l <"$WORK/power.csv") samples in $WORK/power.csv"
        cp "$WORK/power.csv" "$OUT/power.csv"
    fi
}

show_results() {
    local role job
    for role in 1 2; do
        job=$([[ $role == 1 ]] && echo "$J1" || echo "$J2")
        step "job $job: status, then its log"
        fab status "$job"
        fab status "$job" --json >"$WORK/j$role.json"
        echo "--- log of job $job:"
        fab logs "$job" | tee "$WORK/j$role.log"
    done
    step "jobs $J1 and $J2 as JSON (usage: wall_s, cpu_s, max_rss_bytes, gpu_s; events: the timeline)"
    "$PY" "$WORK/brief.py" "$WORK/j1.json" "$WORK/j2.json"
    step "usage by project"
    fab usage
    fab usage --json
    step "downloading the outputs of job $J1"
    fab download "$J1" "$WORK/out" || echo "!!! no outputs to download"
    ls -la "$WORK/out" || true
    cat "$WORK/out/metrics.json" || true
    echo
    "$JOB_PY" -c 'import sys, torch
c = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
model, metrics = c["model"], c["metrics"]
n = sum(t.numel() for t in model.values())
print(f"checkpoint loads: {len(model)} tensors, {n:,} parameters, metrics {metrics}")' \
        "$WORK/out/checkpoint.pt" || echo "!!! the checkpoint does not load"
}

# --- Python helpers, written to $WORK --------------------------------------------------------------
write_helpers() {
    cat >"$WORK/reqcheck.py" <<'EOF'
"""Prints (stdout) the names of requirements of fabriek and of the installed wheels that this Python
does not satisfy; says (stderr) which version of each shared package it found."""
import re, sys, tomllib
from importlib import metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def norm(name): return re.sub(r"[-_.]+", "-", name).lower()

dirs = sys.argv[2:]
ours = {norm(d.metadata["Name"]) for d in md.distributions(path=dirs)}
todo = [("fabriek", r, ()) for r in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]]
for d in md.distributions(path=dirs):
    todo += [(d.metadata["Name"], r, ()) for r in d.requires or []]
unmet, used, seen = set(), {}, set()
while todo:
    who, text, extras = todo.pop()
    req = Requirement(text)
    if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
        continue
    if (who, text, extras) in seen:
        continue
    seen.add((who, text, extras))
    name = norm(req.name)
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        print(f"  MISSING {req.name} (needed by {who}: {text})", file=sys.stderr)
        unmet.add(name)
        continue
    if name not in ours:
        used[name] = dist.version
    if not req.specifier.contains(dist.version, prereleases=True):
        print(f"  TOO OLD {req.name} {dist.version} (needed by {who}: {text})", file=sys.stderr)
        unmet.add(name)
    if req.extras:
        todo += [(req.name, r, tuple(req.extras)) for r in dist.requires or []]
print("  from this machine: " + ", ".join(f"{n} {v}" for n, v in sorted(used.items())), file=sys.stderr)
print(f"  requirements unmet: {', '.join(sorted(unmet)) or 'none'}", file=sys.stderr)
print("\n".join(sorted(unmet)))
EOF
    cat >"$WORK/smoke.py" <<'EOF'
import subprocess, sys
try:
    import fabriek.cli.main, fabriek.server.serve  # noqa: F401
except Exception as exc:
    sys.exit(f"fabriek does not import: {exc!r}")
run = subprocess.run([sys.executable, "-m", "fabriek.cli.main", "--help"], capture_output=True, text=True)
if run.returncode:
    sys.exit(f"fabriek --help fails: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
print(f"fabriek imports and its CLI starts ({fabriek.__file__})")
EOF
    cat >"$WORK/inventory.py" <<'EOF'
import json, os, sys
from fabriek.backends.local.gpus import NvmlInventory, inventory_from_setting
nvml = NvmlInventory().detect()
print(f"NvmlInventory().detect(): {len(nvml)} GPU(s)")
for g in nvml:
    print(f"  index {g.index}  {g.uuid}  {g.model}  {g.memory_bytes / 1024**3:.1f} GiB")
setting = os.environ.get("FABRIEK_GPUS")
used = inventory_from_setting(setting).detect()
if setting not in (None, "nvml"):
    print(f"FABRIEK_GPUS={setting}: the server uses these instead: "
          + ", ".join(f"{g.index} {g.uuid} {g.model}" for g in used))
json.dump({"setting": setting, "nvml": [g.__repr__() for g in nvml],
           "used": [{"index": g.index, "uuid": g.uuid, "model": g.model} for g in used]},
          open(sys.argv[1], "w"))
EOF
    cat >"$WORK/wait_ready.py" <<'EOF'
import os, sys, time
import httpx
url, config, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the server exited before it answered")
    try:
        r = httpx.get(url, timeout=2)
        if r.status_code == 200 and os.path.exists(config):
            print(f"server ready: {r.json()}")
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.3)
sys.exit(f"no answer from {url} in 90s")
EOF
    cat >"$WORK/brief.py" <<'EOF'
import json, sys
keep = ("id", "name", "state", "reason", "resources", "gpu_ids", "exit_code", "submitted_at",
        "admitted_at", "started_at", "finished_at", "usage", "events")
for path in sys.argv[1:]:
    j = json.load(open(path))
    brief = {k: j[k] for k in keep}
    brief["events"] = [{k: e[k] for k in ("at", "from_state", "to_state", "actor", "reason")} for e in j["events"]]
    print(json.dumps(brief, indent=1))
EOF
    cat >"$WORK/power.py" <<'EOF'
# Samples every GPU's power draw and energy counter every 0.1 s until killed: a witness,
# independent of fabriek, to compare its metered energy against.
import signal, sys, time
import pynvml
pynvml.nvmlInit()
handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with open(sys.argv[1], "w", buffering=1) as f:
    f.write("t,index,power_mw,energy_mj\n")
    while True:
        now = time.time()
        for i, h in enumerate(handles):
            f.write(f"{now:.3f},{i},{pynvml.nvmlDeviceGetPowerUsage(h)},{pynvml.nvmlDeviceGetTotalEnergyConsumption(h)}\n")
        time.sleep(0.1)
EOF
    cat >"$WORK/checks.py" <<'EOF'
import json, re, sys
from datetime import datetime
from pathlib import Path
w = Path(sys.argv[1])
load = lambda name: json.loads((w / name).read_text())
inv, j1, j2 = load("inventory.json"), load("j1.json"), load("j2.json")
j1_then, j2_then = load("j1-running.json"), load("j2-waiting.json")
log1, log2 = (w / "j1.log").read_text(), (w / "j2.log").read_text()
server_log = (w / "server.log").read_text()
real = inv["setting"] in (None, "nvml")
t = lambda s: datetime.fromisoformat(s)
results = []
def check(ok, what):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}: {what}")

gpus = inv["used"]
uuid = {g["index"]: g["uuid"] for g in gpus}
if real:
    check(len(inv["nvml"]) >= 1, f"NVML finds {len(inv['nvml'])} GPU(s): {[g['model'] for g in gpus]}")
banner = re.search(r"(\d+) GPUs", server_log)
check(banner is not None and int(banner.group(1)) == len(gpus),
      f"the server's local backend reports {banner.group(1) if banner else '?'} GPUs, the inventory {len(gpus)}")
check(j1_then["state"] == "running" and j2_then["state"] == "pending",
      f"while job {j1['id']} ran ({j1_then['state']}), job {j2['id']} waited ({j2_then['state']}: {j2_then['reason']!r})")
for j, log in ((j1, log1), (j2, log2)):
    check(j["state"] == "succeeded" and j["exit_code"] == 0, f"job {j['id']} {j['state']}, exit code {j['exit_code']}")
    check(len(j["gpu_ids"]) == 1 and j["gpu_ids"][0] in uuid, f"job {j['id']} was given GPU {j['gpu_ids']}")
    given = uuid.get(j["gpu_ids"][0]) if j["gpu_ids"] else None
    seen = re.search(r"CUDA_VISIBLE_DEVICES='([^']*)'", log)
    check(seen is not None and seen.group(1) == given,
          f"job {j['id']} saw CUDA_VISIBLE_DEVICES={seen.group(1) if seen else None}, the UUID of GPU {j['gpu_ids']}")
    if real:
        cuda = re.search(r"cuda: (\d+) device\(s\) visible; using (.*?) \(uuid (\S+),", log)
        check(cuda is not None and cuda.group(1) == "1" and cuda.group(3).lower() == (given or "").lower(),
              f"job {j['id']} trained on CUDA: {cuda.group(0) if cuda else 'no CUDA line in its log'}")
    u = j["usage"]
    check(u["gpu_s"] is not None and u["wall_s"] and abs(u["gpu_s"] - u["wall_s"] * len(j["gpu_ids"])) < 0.01 and u["gpu_s"] > 1,
          f"job {j['id']} usage recorded: wall {u['wall_s']:.1f}s, CPU {u['cpu_s']:.1f}s, GPU {u['gpu_s']:.1f}s, peak RSS {u['max_rss_bytes'] / 2**20:.0f} MiB")
check(t(j2["started_at"]) >= t(j1["finished_at"]),
      f"no overlap: job {j2['id']} started {(t(j2['started_at']) - t(j1['finished_at'])).total_seconds():.2f}s after job {j1['id']} finished")
check((w / "out" / "checkpoint.pt").is_file(), "the checkpoint came back with fabriek download")
# Energy: fabriek's metered GPU energy against a witness that integrated NVML power samples
# (every 0.1 s) over the same interval, and against the counter read by the witness.
power = w / "power.csv"
rows = []
if power.exists():
    for line in power.read_text().splitlines()[1:]:
        ts, index, mw, mj = line.split(",")
        rows.append((float(ts), int(index), int(mw), int(mj)))
for j in (j1, j2):
    e = j.get("energy") or {}
    gpu = e.get("gpu")
    if not real:
        check(gpu is not None and not gpu["measured"], f"job {j['id']} GPU energy estimated (no NVML): {gpu}")
        continue
    check(gpu is not None and gpu["measured"] and gpu["method"] == "NVML energy counter",
          f"job {j['id']} GPU energy measured by NVML's counter: {gpu}")
    if gpu is None or not rows:
        continue
    index = j["gpu_ids"][0]
    a, b = t(j["started_at"]).timestamp(), t(j["finished_at"]).timestamp()
    mine = [(ts, mw / 1000, mj / 1000) for ts, i, mw, mj in rows if i == index and a <= ts <= b]
    integral = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0, _), (t1, p1, _) in zip(mine, mine[1:]))
    counter = mine[-1][2] - mine[0][2] if len(mine) > 1 else 0.0
    span = mine[-1][0] - mine[0][0] if len(mine) > 1 else 0.0
    scale = (b - a) / span if span else 0.0  # the witness's samples cover slightly less than the run
    print(f"job {j['id']}: fabriek {gpu['joules']:.0f} J over {b - a:.1f}s ({gpu['joules'] / (b - a):.0f} W mean); "
          f"witness: power integral {integral:.0f} J and counter {counter:.0f} J over {span:.1f}s "
          f"({len(mine)} samples), scaled to the run {integral * scale:.0f} J / {counter * scale:.0f} J; "
          f"fabriek / power integral = {gpu['joules'] / (integral * scale) if integral else float('nan'):.3f}")
    check(integral > 0 and abs(gpu["joules"] / (integral * scale) - 1) < 0.10,
          f"job {j['id']}: NVML energy counter within 10% of the integrated power samples")
    cpu = e.get("cpu")
    check(cpu is not None and cpu["joules"] > 0, f"job {j['id']} CPU energy: {cpu}")
print("\ntimeline (seconds after the first submission):")
t0 = min(t(j["submitted_at"]) for j in (j1, j2))
for j in (j1, j2):
    for e in j["events"]:
        print(f"  {(t(e['at']) - t0).total_seconds():7.2f}  job {j['id']}  {e['from_state'] or '-':>9} -> {e['to_state']:<9} {e['reason'] or ''}")
print(f"\n{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
EOF
}

set -o pipefail
main "$@" 2>&1 | (trap "" INT && tee "$OUT/gpu_proof.log") # tee outlives Ctrl-C to log the cleanup
