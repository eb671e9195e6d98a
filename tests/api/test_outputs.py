"""Downloading a job's outputs, as a hostile job would leave them: deep, huge, sparse, many,
linked to files that are not its own; and a download cut off half way."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_api import job_body, wait_final
from tests.conftest import create_pg_database, drop_pg_database
from tests.helpers import ServerProcess, start_server, wait_for

MAX_BYTES = 64 * 2**20
MAX_ENTRIES = 2000


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server whose downloads are limited to 64 MiB and 2,000 entries."""
    extra = {
        "FABRIEK_OUTPUTS_DOWNLOAD_MAX_BYTES": str(MAX_BYTES),
        "FABRIEK_OUTPUTS_DOWNLOAD_MAX_ENTRIES": str(MAX_ENTRIES),
    }
    name = None
    if request.param == "postgresql":
        admin = request.getfixturevalue("pg_server")
        name, extra["FABRIEK_DATABASE_URL"] = create_pg_database(admin)
    proc = start_server(tmp_path_factory.mktemp(f"outputs-{request.param}") / "home", **extra)
    yield proc
    proc.stop()
    if name is not None:
        drop_pg_database(request.getfixturevalue("pg_server"), name)


def run(http: httpx.Client, script: str, **env: str) -> dict[str, object]:
    """Run `script` with sh as a job; its final state."""
    r = http.post("/jobs", json=job_body(argv=["sh", "-c", script], env=env))
    assert r.status_code == 201, r.text
    job = wait_final(http, r.json()["id"])
    assert job["state"] == "succeeded", job
    return job


def members(answer: httpx.Response) -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    assert answer.status_code == 200, answer.text
    found = {}
    with tarfile.open(fileobj=io.BytesIO(answer.content), mode="r:gz") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member) if member.isfile() else None
            found[member.name] = (member, data.read() if data is not None else None)
    return found


DEEP = """
import os
os.chdir(os.environ["FABRIEK_OUTPUT_DIR"])
for _ in range(1100):
    os.mkdir("d")
    os.chdir("d")
open("bottom.txt", "w").write("deep\\n")
"""


def test_outputs_nested_1100_deep_download_whole(server: ServerProcess) -> None:
    """Was a 500: tarfile's recursive add ran out of Python's recursion limit."""
    with server.http() as http:
        job = run(http, f"python3 -c '{DEEP}'")
        found = members(http.get(f"/jobs/{job['id']}/outputs"))
    # (pytest's own clean-up of old temporary directories recurses: it must not meet this tree)
    for output in (server.home / "jobs").glob(f"{job['id']}-*/output"):
        subprocess.run(["rm", "-rf", str(output)], check=True)
    bottom = "./" + "/".join(["d"] * 1100) + "/bottom.txt"
    assert found[bottom][1] == b"deep\n"
    assert len(found) == 1 + 1100 + 1  # ".", the directories, the file


def test_links_a_job_leaves_are_sent_as_links_never_as_what_they_point_at(
    server: ServerProcess,
) -> None:
    """A job links /etc/passwd and another job's outputs into its own: the archive holds the
    links' names, never the files behind them; a job that replaces its whole output directory
    by a link to another job's gets a 404, not their files."""
    with server.http() as http:
        victim = run(http, 'echo their-secret > "$FABRIEK_OUTPUT_DIR/model.bin"')
        victim_dir = next((server.home / "jobs").glob(f"{victim['id']}-*"))
        attack = (
            'cd "$FABRIEK_OUTPUT_DIR" && ln -s /etc/passwd passwd && ln -s "$VICTIM" theirs'
            ' && ln -s "$VICTIM/model.bin" model.bin && ln -s / root'
        )
        attacker = run(http, attack, VICTIM=str(victim_dir / "output"))
        found = members(http.get(f"/jobs/{attacker['id']}/outputs"))
        assert set(found) == {".", "./passwd", "./theirs", "./model.bin", "./root"}
        assert all(info.issym() and data is None for info, data in list(found.values())[1:])
        assert found["./passwd"][0].linkname == "/etc/passwd"
        # In its sandbox a job cannot remove its output directory (a mount point there), so the
        # swap is made as a job run without the sandbox could make it, from outside.
        swapper = run(http, "true")
        output = next((server.home / "jobs").glob(f"{swapper['id']}-*")) / "output"
        output.rmdir()
        output.symlink_to(victim_dir / "output")
        r = http.get(f"/jobs/{swapper['id']}/outputs")
        assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
        assert "replaced its output directory" in r.json()["error"]["message"]
        assert b"their-secret" not in r.content


def test_a_sparse_file_counts_at_its_full_size_and_past_the_limit_is_refused_first(
    server: ServerProcess,
) -> None:
    """A sparse file takes no disk but is read and sent at its full size: 1 GB of it cost 10 s
    of server CPU per download. Past the limit the answer is a 413 before a byte is read."""
    with server.http() as http:
        small = run(http, 'truncate -s 10M "$FABRIEK_OUTPUT_DIR/sparse.bin"')
        found = members(http.get(f"/jobs/{small['id']}/outputs"))
        assert found["./sparse.bin"][1] == b"\0" * 10 * 2**20
        big = run(http, 'truncate -s 1G "$FABRIEK_OUTPUT_DIR/sparse.bin"')
        r = http.get(f"/jobs/{big['id']}/outputs")
        assert (r.status_code, r.json()["error"]["code"]) == (413, "outputs_too_large")
        message = r.json()["error"]["message"]
        assert "1.0G" in message and "64M" in message and "sparse" in message
        assert "outputs_download_max_bytes" in message


def test_more_entries_than_a_download_may_pack_are_refused(server: ServerProcess) -> None:
    with server.http() as http:
        job = run(http, f'cd "$FABRIEK_OUTPUT_DIR" && seq 1 {MAX_ENTRIES + 1} | xargs touch')
        r = http.get(f"/jobs/{job['id']}/outputs")
        assert (r.status_code, r.json()["error"]["code"]) == (413, "outputs_too_large")
        assert f"more than {MAX_ENTRIES:,} files" in r.json()["error"]["message"]


LONG = """
import os
os.chdir(os.environ["FABRIEK_OUTPUT_DIR"])
for _ in range(20):
    os.mkdir("n" * 250)
    os.chdir("n" * 250)
open("bottom.txt", "w").write("deep\\n")
"""


def test_a_path_longer_than_a_download_packs_is_refused_before_a_byte_goes_out(
    server: ServerProcess,
) -> None:
    """20 levels of 250-character names: a path of 5 KB. Unbounded, every name a tree of
    them holds went into the archive and, while it was measured, into the server's memory."""
    with server.http() as http:
        job = run(http, f"python3 -c '{LONG}'")
        r = http.get(f"/jobs/{job['id']}/outputs")
        assert (r.status_code, r.json()["error"]["code"]) == (413, "outputs_too_large")
        assert "longer than the 4,096" in r.json()["error"]["message"]


def _archives(home: Path) -> list[str]:
    """Every *.tar.gz under the server's home (find: the home holds a tree 1,100 deep)."""
    found = subprocess.run(
        ["find", str(home), "-name", "*.tar.gz"], capture_output=True, text=True, check=True
    )
    return found.stdout.split()


def test_a_download_cut_off_half_way_leaves_no_file_behind(server: ServerProcess) -> None:
    """The outputs are made while they are sent: no temporary archive in the server's home,
    during the download or after it was cut off (one was left behind for every abort)."""
    with server.http() as http:
        job = run(http, 'head -c 40000000 /dev/urandom > "$FABRIEK_OUTPUT_DIR/weights.bin"')
        with http.stream("GET", f"/jobs/{job['id']}/outputs") as answer:
            assert answer.status_code == 200
            assert answer.headers["content-type"] == "application/gzip"
            first = next(answer.iter_raw())
            assert first and _archives(server.home) == []
        # Cut off: the server stops at once and keeps nothing; it still answers.
        assert _archives(server.home) == []
        assert http.get(f"/jobs/{job['id']}").status_code == 200
        whole = members(http.get(f"/jobs/{job['id']}/outputs"))
        assert len(whole["./weights.bin"][1] or b"") == 40_000_000
        wait_for(lambda: _archives(server.home) == [], timeout=2, what="no archive left")


def test_a_log_the_job_replaced_with_a_link_or_a_pipe_is_a_409_never_read(
    server: ServerProcess,
) -> None:
    """The logs lie in the job's own directory. A job that replaced its stdout.log with a link
    to another job's had the server read that job's log for it; with a FIFO the request hung
    for ever (45 of them took the API down). Now both are a 409 at once; an index replaced by
    a FIFO is no index: `since` answers from the start of the log."""
    # In its sandbox a job cannot reach its job directory any more: the replacements are made
    # from outside, as a job run without the sandbox (FABRIEK_SANDBOX=0) could make them.
    with server.http() as http:

        def job_dir(job: dict[str, object]) -> Path:
            return next((server.home / "jobs").glob(f"{job['id']}-*"))

        victim = run(http, "echo their-secret")
        link, fifo, index = run(http, "true"), run(http, "true"), run(http, "echo mine")
        (job_dir(link) / "stdout.log").unlink()
        (job_dir(link) / "stdout.log").symlink_to(job_dir(victim) / "stdout.log")
        (job_dir(fifo) / "stderr.log").unlink()
        os.mkfifo(job_dir(fifo) / "stderr.log")
        (job_dir(index) / "log.index").unlink(missing_ok=True)
        os.mkfifo(job_dir(index) / "log.index")
        r = http.get(f"/jobs/{link['id']}/logs", timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict"), r.text
        assert "stdout log is not a regular file" in r.json()["error"]["message"]
        assert b"their-secret" not in r.content
        r = http.get(f"/jobs/{fifo['id']}/logs", params={"stream": "stderr"}, timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict"), r.text
        assert "stderr log is not a regular file" in r.json()["error"]["message"]
        since = {"since": "1970-01-02T00:00:00Z"}
        r = http.get(f"/jobs/{index['id']}/logs", params=since, timeout=10)
        assert (r.status_code, r.content) == (200, b"mine\n")
        assert http.get("/health", timeout=10).status_code == 200


def test_a_job_that_replaces_its_records_with_pipes_and_links_does_not_stop_the_controller(
    server: ServerProcess,
) -> None:
    """started.json lies in the job's directory and the controller reads it every pass: a FIFO
    there blocked the controller for ever (no job anywhere ended or started again); a link to
    /dev/zero had it read without end. Now a record that is not a regular file is no record."""
    with server.http() as http:
        for swap in ("mkfifo ../started.json", "ln -s /dev/zero ../started.json"):
            body = job_body(argv=["sh", "-c", f"rm ../started.json && {swap} && sleep 1"])
            wait_final(http, http.post("/jobs", json=body).json()["id"])  # it ends
        run(http, "echo the-next-job")
