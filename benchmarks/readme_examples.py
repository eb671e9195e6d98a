"""How long each `fabriek simulate` and `fabriek plan` command of the README takes, run as printed.

The README states each one's time on 2 cores; tests/test_readme.py runs the short ones and checks
that every one states a time, this measures them all (the tests never time anything). Each runs
in a fresh temporary directory, one after another, after waiting for the machine to be quiet;
the answer is the wall time of the whole command, start-up included, against the stated time.

    python benchmarks/readme_examples.py [--only TEXT] [--json results/COMMIT-readme_examples.json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import REPO, describe, machine, table, wait_for_quiet, write_json

sys.path.insert(0, str(REPO))
from tests.test_readme import offline_commands  # the one reader of the README


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Only the commands containing this text.")
    parser.add_argument("--json", help="Also write the results to this file.")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="Wait up to S seconds for other load to end before each command.")  # fmt: skip
    args = parser.parse_args()
    env_bin = Path(sys.executable).parent
    rows, results = [], []
    for command, stated in offline_commands():
        if args.only and args.only not in command:
            continue
        wait_for_quiet(args.quiet_wait)
        with tempfile.TemporaryDirectory() as work:
            start = time.monotonic()
            r = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=work,
                               env={"PATH": f"{env_bin}:/usr/bin:/bin", "HOME": work},
                               capture_output=True, text=True)  # fmt: skip
            seconds = time.monotonic() - start
        results.append({"command": command.split("#")[0].strip(), "stated_s": stated,
                        "seconds": round(seconds, 1), "exit": r.returncode})  # fmt: skip
        rows.append((command.split("#")[0].strip(), f"{stated:.0f}", f"{seconds:.1f}",
                     f"{seconds / stated:.2f}", r.returncode))  # fmt: skip
        print(f"{seconds:7.1f} s (stated {stated:.0f}) exit {r.returncode}: {command}", flush=True)
        if r.returncode:
            print(r.stderr[-2000:], file=sys.stderr)
    info = machine()
    print(describe(info))
    print(table(("COMMAND", "STATED s", "MEASURED s", "RATIO", "EXIT"), rows))
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
