"""The project stands on its own: nothing in it reads the team's data folder beside the checkout,
which a user's clone does not have, and CI runs the suite with that folder hidden."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not find itself.
BESIDE = re.compile(r"\.\./" + r"shared|shared/" + r"data")
# Records of earlier runs: BENCHMARKS.md's commands and results/ as they were run then.
RECORDS = ("BENCHMARKS.md", "benchmarks/results/")


def test_nothing_in_the_project_refers_to_the_folder_beside_the_checkout() -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = []
    for rel in listed.splitlines():
        path = REPO / rel
        if (
            rel.startswith(RECORDS)
            or rel == ".ci/run"
            or path.suffix == ".gz"
            or not path.is_file()
        ):
            continue  # .ci/run names the folder to hide it: its one allowed mention
        text = path.read_text(errors="replace")
        found += [f"{rel}: {m.group(0)}" for m in BESIDE.finditer(text)]
    assert not found, found


def test_in_ci_the_folder_beside_the_checkout_is_hidden() -> None:
    """.ci/run hides the folder before the suite; a run that saw it would prove nothing."""
    if not os.environ.get("CI"):
        pytest.skip("CI's promise: a developer's checkout has the folder beside it")
    assert os.environ.get("FABRIEK_SHARED_HIDDEN") == "1"
    assert not (REPO.parent / "shared" / "data").exists()
