"""Workdir uploads as a hostile tenant makes them, through a real server on each database (issue 21,
items 3, 5 and 7): clear 4xx answers, never a 500; what is accepted, a job unpacks; the
unpacking is part of the job's time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fabriek.client.client import Client
from fabriek.core.errors import WorkdirTooLarge
from tests.archives import dir_entry, file_entry, make_archive, make_many
from tests.helpers import ServerProcess, start_server, wait_for


@pytest.fixture
def server(tmp_path: Path, database_env: dict[str, str]) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path / "home", FABRIEK_WORKDIR_MAX_ENTRIES="1000", **database_env)
    yield proc
    proc.stop()


def _upload(http: httpx.Client, archive: Path) -> httpx.Response:
    return http.post(
        "/workdirs", content=archive.read_bytes(), headers={"Content-Type": "application/gzip"}
    )


@pytest.mark.parametrize(
    ("entries", "status", "code", "words"),
    [
        ([file_entry("a\x00b" + "c" * 200)], 422, "invalid_request", "control character"),
        ([file_entry("a"), file_entry("a/b")], 422, "invalid_request", "below the file 'a'"),
        ([file_entry("n" * 2**20)], 422, "invalid_request", "longer than the limit of 1024"),
        ([file_entry("a\x1b]8;;http://x\x07b")], 422, "invalid_request", "control character"),
    ],
    ids=["nul-in-pax-path", "file-then-below-it", "one-mib-name", "osc-in-name"],
)
def test_archives_a_job_could_not_unpack_are_refused_clearly(
    server: ServerProcess,
    tmp_path: Path,
    entries: list[object],
    status: int,
    code: str,
    words: str,
) -> None:
    archive = make_archive(tmp_path / "w.tar.gz", entries)  # type: ignore[arg-type]
    with server.http() as http:
        r = _upload(http, archive)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert words in r.json()["error"]["message"] and len(r.text) < 1000


def test_too_many_entries_are_refused_as_too_large(server: ServerProcess, tmp_path: Path) -> None:
    with server.http() as http:
        r = _upload(http, make_many(tmp_path / "many.tar.gz", 5000))
    assert (r.status_code, r.json()["error"]["code"]) == (413, "workdir_too_large")
    assert "more than the limit of 1000 entries" in r.json()["error"]["message"]


def test_an_archive_of_dot_is_accepted_and_its_job_runs(
    server: ServerProcess, tmp_path: Path
) -> None:
    """`tar -C dir -czf w.tar.gz .` writes a `./` entry: accepted, and skipped when unpacked."""
    archive = make_archive(
        tmp_path / "w.tar.gz", [dir_entry("./", mode=0o000), file_entry("./main.sh", b"echo hi\n")]
    )
    with server.http() as http:
        upload = _upload(http, archive)
        assert upload.status_code == 201, upload.text
        job = http.post(
            "/jobs",
            json={
                "name": "dot",
                "argv": ["sh", "main.sh"],
                "cpus": 1,
                "memory_bytes": 2**30,
                "time_limit_s": 60,
                "workdir": upload.json()["digest"],
            },
        )
        assert job.status_code == 201, job.text
        done = wait_for(
            lambda: (
                (j := http.get(f"/jobs/{job.json()['id']}").json())["state"]
                in ("succeeded", "failed", "timed_out", "cancelled")
                and j
            ),
            what="the job to end",
        )
    assert done["state"] == "succeeded", done


def test_the_client_applies_the_servers_entry_limit_before_uploading(
    server: ServerProcess, tmp_path: Path
) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    for i in range(1200):
        (root / f"{i}.txt").write_text("")
    client = Client(server.url, server.token)
    with pytest.raises(WorkdirTooLarge, match="more than the limit of 1000 files, folders"):
        client.upload_workdir(root)


def test_a_job_whose_unpacking_outlasts_its_time_limit_ends_timed_out(
    tmp_path: Path, database_env: dict[str, str]
) -> None:
    """Item 5, through the controller: the job runs from before its unpacking (running, its
    start recorded), and ends timed_out with its usage, not failed as a job that never started."""
    proc = start_server(
        tmp_path / "home", FABRIEK_WORKDIR_MAX_BYTES=str(64 * 2**20), **database_env
    )
    try:
        with proc.http() as http:
            upload = _upload(http, make_many(tmp_path / "many.tar.gz", 60_000))
            assert upload.status_code == 201, upload.text
            job = http.post(
                "/jobs",
                json={
                    "name": "slow-unpack",
                    "argv": ["true"],
                    "cpus": 1,
                    "memory_bytes": 2**30,
                    "time_limit_s": 1,
                    "gpus": 1,
                    "workdir": upload.json()["digest"],
                },
            )
            assert job.status_code == 201, job.text
            done = wait_for(
                lambda: (
                    (j := http.get(f"/jobs/{job.json()['id']}").json())["state"]
                    in ("succeeded", "failed", "timed_out", "cancelled")
                    and j
                ),
                what="the job to end",
            )
    finally:
        proc.stop()
    assert done["state"] == "timed_out", done
    assert done["reason"] == "ran past its time limit of 1s while its workdir was unpacked"
    assert done["started_at"] is not None and 1 <= done["usage"]["wall_s"] < 5
    assert done["usage"]["gpu_s"] >= 1  # charged: its GPU was held while it unpacked
