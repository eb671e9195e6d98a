"""The `fabriek` command line. `main` is the console script: it loads the CLI inside a guard, so
Ctrl-C while it is still starting ends as it does later (one line, exit status 130), and the
processes a replay spawns, which run this file's importer again, import almost nothing."""

from __future__ import annotations

import sys


def main() -> None:  # pragma: no cover - the console script; tests run it as a process
    try:
        from fabriek.cli.main import main as run

        run()
    except KeyboardInterrupt:  # the commands say more where it matters (`interruptible`)
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130) from None
