"""What one `GET /jobs/{id}/outputs` costs the server: CPU seconds and wall time.

Issue 21, item 6: a job that wrote a 1 GB sparse file cost 10 s of server CPU per download.

How it measures:

1. Start `fabriek up` on a temporary home (SQLite, or PostgreSQL with --databases postgres).
2. Run one job that writes the outputs of a --case: `sparse` (one file of --size bytes made with
   truncate: no data on disk, all of it zeros to read), `random` (--size bytes from /dev/urandom:
   what a checkpoint looks like to gzip), `many` (--files empty files).
3. Download its outputs --repeat times, reading the whole answer; for each, the server's CPU
   seconds (its main process and the API workers under it, from /proc) and the wall time.
4. Report the answer's status, its size, and the CPU and wall times (median and max).

    python benchmarks/outputs_download.py                       # 1 GB sparse file
    python benchmarks/outputs_download.py --case random --size 200000000
    python benchmarks/outputs_download.py --case sparse --size 20000000000   # past the limit
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
from _harness import common_options, database, fabriek_server, job_body, machine, write_json

SCRIPTS = {
    "sparse": 'truncate -s {size} "$FABRIEK_OUTPUT_DIR/sparse.bin"',
    "random": 'head -c {size} /dev/urandom > "$FABRIEK_OUTPUT_DIR/random.bin"',
    "many": 'cd "$FABRIEK_OUTPUT_DIR" && seq 1 {files} | xargs touch',
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(SCRIPTS), default="sparse")
    parser.add_argument("--size", type=int, default=10**9, help="bytes (sparse, random)")
    parser.add_argument("--files", type=int, default=50_000, help="entries (many)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--databases", default="sqlite")
    common_options(parser)
    args = parser.parse_args()
    results = []
    for kind in args.databases.split(","):
        with database(kind) as url, fabriek_server(database_url=url, cpus=2) as server:
            script = SCRIPTS[args.case].format(size=args.size, files=args.files)
            with httpx.Client(base_url=server.api, headers=server.headers, timeout=600) as http:
                answer = http.post("/jobs", json=job_body("outputs", ["sh", "-c", script]))
                job = answer.json()
                assert answer.status_code == 201, answer.text
                while http.get(f"/jobs/{job['id']}").json()["state"] not in (
                    "succeeded",
                    "failed",
                ):
                    time.sleep(0.2)
                cpu, wall, sizes, statuses = [], [], [], []
                for _ in range(args.repeat):
                    before, began = server.cpu_seconds(), time.monotonic()
                    size = 0
                    with http.stream("GET", f"/jobs/{job['id']}/outputs") as response:
                        statuses.append(response.status_code)
                        for chunk in response.iter_bytes():
                            size += len(chunk)
                    wall.append(time.monotonic() - began)
                    cpu.append(server.cpu_seconds() - before)
                    sizes.append(size)
            result = {
                "database": kind,
                "case": args.case,
                "size": args.size if args.case != "many" else args.files,
                "status": statuses,
                "answer_bytes": sizes,
                "cpu_s_median": statistics.median(cpu),
                "cpu_s_max": max(cpu),
                "wall_s_median": statistics.median(wall),
            }
            results.append(result)
            print(
                f"{kind}: {args.case} {result['size']:,}: status {statuses[0]}, "
                f"answer {sizes[0]:,} bytes, server CPU {result['cpu_s_median']:.2f} s "
                f"(max {result['cpu_s_max']:.2f}), wall {result['wall_s_median']:.2f} s"
            )
    write_json(args.json, {"machine": machine(), "results": results})


if __name__ == "__main__":
    main()
