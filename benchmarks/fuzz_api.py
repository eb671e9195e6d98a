"""Fuzz the whole API with Schemathesis, as an operator, on each database: no answer may be a 5xx.

Starts a real `fabriek up` per database (a fresh SQLite home; a throwaway PostgreSQL database),
then runs `schemathesis run` over its /openapi.json with the bootstrap operator's token: every
check, every phase (examples, coverage, fuzzing, stateful with the schema's links), until
--max-time seconds are spent. fuzz_hooks.py counts every response by status and keeps the
server errors with a curl line to reproduce each. The server runs with PATH pointing nowhere, so
the jobs the fuzzer submits fail to start instead of running whatever a generated argv names (it
holds bubblewrap and setpriv alone, which the server sandboxes jobs with).

    python benchmarks/fuzz_api.py [--databases sqlite,postgres] [--max-time 600] [--seed N]
        [--min-requests 20000] [--json results/COMMIT-fuzz_api.json]

Exit status 1 when a response was a 5xx, the server logged an unexpected error, or fewer than
--min-requests requests were made; Schemathesis's own findings (schema conformance) are listed
but do not fail the run (the summary says how many remain).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _harness import DATABASES, database, describe, fabriek_server, machine, table, write_json

HERE = Path(__file__).resolve().parent


def _sandbox_only(tools: str) -> str:
    """A PATH holding only what the server needs to sandbox jobs (bubblewrap, setpriv): the
    jobs' commands (their PATH is the server's) are found nowhere and fail to start."""
    for name in ("bwrap", "setpriv"):
        found = shutil.which(name)
        if found:
            os.symlink(found, os.path.join(tools, name))
    return tools


def fuzz(kind: str, *, max_time: int, seed: int | None, workers: int) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory() as tools,
        database(kind) as url,
        fabriek_server(
            database_url=url, cpus=1, extra_env={"PATH": _sandbox_only(tools)}
        ) as server,
        tempfile.TemporaryDirectory() as work,
    ):
        me = httpx.get(server.api + "/whoami", headers=server.headers).json()
        own = [t for t in httpx.get(server.api + "/tokens", headers=server.headers).json()]
        token_id = next(t["id"] for t in own if server.token.startswith(t["prefix"]))
        counts = Path(work) / "counts.json"
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            "FUZZ_COUNTS": str(counts),
            "FUZZ_OWN_TOKEN_ID": str(token_id),
            "FUZZ_OWN_USER": me["name"],
        }
        command = [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            server.url + "/openapi.json",
            "--header",
            f"Authorization: Bearer {server.token}",
            "--checks",
            "all",
            "--max-time",
            str(max_time),
            "--workers",
            str(workers),
            "--continue-on-failure",
            "--suppress-health-check",
            "all",
            "--request-timeout",
            "30",
            *(["--seed", str(seed)] if seed is not None else []),
        ]
        start = time.monotonic()
        run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=work)
        elapsed = time.monotonic() - start
        data = json.loads(counts.read_text()) if counts.exists() else {"statuses": {}}
        log = server.log_path.read_text(errors="replace")
    statuses = {int(k): v for k, v in data["statuses"].items()}
    findings = dict(re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", run.stdout))
    return {
        "database": kind,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "statuses": statuses,
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "first_server_errors": data.get("server_errors", [])[:10],
        "logged_unexpected_errors": log.count("unexpected error"),
        "schemathesis_exit": run.returncode,
        "schemathesis_findings": {k: int(v) for k, v in findings.items()},
        "schemathesis_tail": run.stdout[-6000:],
        "schemathesis_report": run.stdout,
        "seed": (re.search(r"Seed: (\d+)", run.stdout) or [None, None])[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default=",".join(DATABASES))
    parser.add_argument("--max-time", type=int, default=600, help="seconds of fuzzing per database")
    parser.add_argument("--seed", type=int, help="Schemathesis's seed (default: a random one)")
    parser.add_argument("--workers", type=int, default=2, help="concurrent fuzzing workers")
    parser.add_argument("--min-requests", type=int, default=0, help="fail below this many")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--verbose", action="store_true", help="print Schemathesis's report")
    parser.add_argument("--report", metavar="DIR", help="write each database's full report here")
    args = parser.parse_args()
    info = machine()
    results = []
    for kind in args.databases.split(","):
        result = fuzz(kind, max_time=args.max_time, seed=args.seed, workers=args.workers)
        results.append(result)
        if args.report:
            Path(args.report).mkdir(parents=True, exist_ok=True)
            (Path(args.report) / f"{kind}.txt").write_text(result.pop("schemathesis_report"))
        else:
            result.pop("schemathesis_report")
        if args.verbose or result["server_errors"] or result["logged_unexpected_errors"]:
            print(result["schemathesis_tail"])
        for error in result["first_server_errors"]:
            print(f"{error['status']} {error['method']} {error['path']}\n  {error['curl']}")
    print(describe(info))
    rows = [
        [
            r["database"],
            r["seconds"],
            r["requests"],
            r["server_errors"],
            r["logged_unexpected_errors"],
            " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items())),
            ", ".join(f"{k} ({v})" for k, v in r["schemathesis_findings"].items()) or "none",
        ]
        for r in results
    ]
    headers = ["database", "s", "requests", "5xx", "logged errors", "statuses", "findings"]
    print(table(headers, rows))
    write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    failed = [
        r["database"]
        for r in results
        if r["server_errors"] or r["logged_unexpected_errors"] or r["requests"] < args.min_requests
    ]
    if failed:
        sys.exit(f"fuzzing failed on {', '.join(failed)}")


if __name__ == "__main__":
    main()
