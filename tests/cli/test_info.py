"""`fabriek whoami`, `partitions`, `--version`, the `show` of each noun, `--help`'s order, usage
errors and shell completion: real invocations of the installed command, against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable

import pytest

from fabriek import __version__
from tests.helpers import FABRIEK, ServerProcess, wait_for

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _user(server: ServerProcess, name: str, *flags: str) -> tuple[Cli, str]:
    """A new user (made by the operator) and a way to run the CLI as them, with their token."""
    made = server.cli("user", "create", name, *flags)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    env = dict(server.env, FABRIEK_URL=server.url, FABRIEK_TOKEN=token)
    env.pop("FABRIEK_CONFIG")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([FABRIEK, *args], env=env, capture_output=True, text=True, timeout=60)

    return run, token


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, (r.args, r.stdout, r.stderr)
    return r.stdout


def _rows(shown: str) -> dict[str, str]:
    """A `show` answer's labelled lines (single-word labels) as label -> value."""
    return {line.split()[0]: " ".join(line.split()[1:]) for line in shown.splitlines()}


def test_whoami_says_who_where_which_roles_and_until_when(server: ServerProcess) -> None:
    for args in (
        ("org", "create", "info-org", "--display-name", "Info", "--kind", "sme"),
        ("project", "create", "info-proj", "--org", "info-org"),
    ):
        _ok(server.cli(*args))
    as_ida, _ = _user(server, "ida-info", "--reviewer", "--token-days", "30")
    _ok(server.cli("org", "add-member", "info-org", "ida-info", "--role", "manager"))
    _ok(server.cli("project", "add-member", "info-proj", "ida-info"))
    lines = _rows(_ok(as_ida("whoami")))
    assert lines["user"] == "ida-info" and lines["server"] == server.url
    assert lines["roles"] == "reviewer"
    assert lines["organisations"] == "info-org (manager)"
    assert lines["projects"] == "info-proj (member, info-org)"
    expiry = r"\d+ \(first\), expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in (29d23h|30d00h)\)"
    assert re.fullmatch(expiry, lines["token"]), lines["token"]
    me = json.loads(_ok(as_ida("whoami", "--json")))
    assert me["url"] == server.url and me["is_reviewer"] and not me["is_operator"]
    assert me["projects"] == [{"name": "info-proj", "role": "member", "organisation": "info-org"}]
    assert json.loads(_ok(server.cli("whoami", "--json")))["is_operator"]


def test_show_commands_answer_as_the_api_authorises(server: ServerProcess) -> None:
    as_una, _ = _user(server, "una-info")
    as_vic, _ = _user(server, "vic-info")
    # user show: yourself; operators anyone.
    me = _rows(_ok(as_una("user", "show", "una-info")))
    assert (me["user"], me["operator"], me["reviewer"]) == ("una-info", "no", "no")
    assert json.loads(_ok(as_una("user", "show", "una-info", "--json")))["name"] == "una-info"
    r = as_una("user", "show", "vic-info")
    assert r.returncode == 3 and "only operators" in r.stderr and r.stderr.count("\n") == 1
    assert json.loads(_ok(server.cli("user", "show", "una-info", "--json")))["is_reviewer"] is False
    # token show: your own; operators anyone's; another user's is absent.
    mine = json.loads(_ok(as_una("token", "list", "--json")))[0]
    shown = _ok(as_una("token", "show", str(mine["id"])))
    assert "una-info" in shown and mine["prefix"] in shown and "(in 89d" in shown
    assert (
        json.loads(_ok(server.cli("token", "show", str(mine["id"]), "--json")))["id"] == mine["id"]
    )
    r = as_vic("token", "show", str(mine["id"]))
    assert r.returncode == 4 and f"no token {mine['id']} of yours" in r.stderr
    # pool show: everyone.
    pool = _ok(as_una("pool", "show", "regional"))
    assert "25% of each GPU type" in pool and "region NL11/NL12/NL13" in pool
    assert json.loads(_ok(as_una("pool", "show", "commercial", "--json")))["name"] == "commercial"
    r = as_una("pool", "show", "nowhere")
    assert r.returncode == 4 and "no pool named 'nowhere'" in r.stderr
    # allocation show: the project's members and operators; others find nothing.
    _ok(server.cli("org", "add-member", "default", "una-info"))
    _ok(server.cli("project", "add-member", "default", "una-info"))
    granted = _ok(
        server.cli(
            "allocation", "grant", "--project", "default", "--pool", "commercial",
            "--gpu-hours", "12", "--days", "30", "--note", "for the show", "--json",
        )
    )  # fmt: skip
    allocation = json.loads(granted)["id"]
    shown = _ok(as_una("allocation", "show", str(allocation)))
    assert "project default in pool commercial" in shown and "12 GPU-hours" in shown
    assert "12.00 GPU-hours for new jobs" in shown and "for the show" in shown
    assert (
        json.loads(_ok(server.cli("allocation", "show", str(allocation), "--json")))["gpu_hours"]
        == 12
    )
    r = as_vic("allocation", "show", str(allocation))
    assert r.returncode == 4 and f"no allocation {allocation}" in r.stderr


def test_an_operator_gives_a_user_a_new_token(server: ServerProcess) -> None:
    as_wim, _ = _user(server, "wim-info")
    r = as_wim("token", "create", "x", "--user", "root")
    assert r.returncode == 3 and "only operators" in r.stderr
    made = server.cli("token", "create", "replacement", "--user", "wim-info", "--days", "7")
    assert made.returncode == 0, made.stderr
    env = dict(server.env, FABRIEK_URL=server.url, FABRIEK_TOKEN=made.stdout.strip())
    env.pop("FABRIEK_CONFIG")
    r = subprocess.run([FABRIEK, "whoami", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(r.stdout)["name"] == "wim-info"


def test_partitions_show_what_is_busy_and_waiting_without_names(server: ServerProcess) -> None:
    as_xan, _ = _user(server, "xan-info")
    name = "confidential-training-run"
    job = _ok(
        server.cli("submit", "--parsable", "--no-workdir", "--gpus", "2", "--name", name,
                   "--time", "5m", "--", "sleep", "60")
    ).strip()  # fmt: skip
    waiting = _ok(
        server.cli("submit", "--parsable", "--no-workdir", "--gpus", "1", "--name", name,
                   "--time", "5m", "--", "sleep", "60")
    ).strip()  # fmt: skip

    def state(job_id: str) -> str:
        return str(json.loads(_ok(server.cli("status", job_id, "--json")))["state"])

    wait_for(lambda: state(job) == "running", what="the two-GPU job")
    try:
        table = _ok(as_xan("partitions"))
        assert name not in table and "root" not in table
        rows = [line.split() for line in table.splitlines()]
        local = next(row for row in rows if row[0] == "local")
        # local, this machine, 1 node mixed, CPUs, memory, both GPUs busy, their type, the
        # network its jobs get, 1 job
        assert local[1:4] == ["local", "1", "0/1/0"] and local[4] == "1/2"
        assert local[6:] == ["2/2", "test-gpu", "host", "1"]
        unallocated = next(row for row in rows if row[0] == "unallocated")
        assert unallocated[1:] == ["1", "2", "1", "1"]
        answer = json.loads(_ok(as_xan("partitions", "--json")))
        assert answer["partitions"][0]["gpus_busy"] == 2 and name not in json.dumps(answer)
    finally:
        for job_id in (job, waiting):
            server.cli("cancel", job_id)


def test_version() -> None:
    r = subprocess.run([FABRIEK, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == f"fabriek {__version__}\n"


def test_help_lists_the_everyday_commands_first() -> None:
    r = subprocess.run([FABRIEK, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = re.findall(r"^  ([a-z]+) ", r.stdout.split("Commands:")[1], re.MULTILINE)
    assert names[:5] == ["up", "submit", "jobs", "status", "logs"]
    assert {"whoami", "partitions", "org", "facility"} <= set(names)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "--frobnicate", "--", "true"], "No such option: --frobnicate; see `fabriek submit --help`"),
        (["frobnicate"], "No such command 'frobnicate'; see `fabriek --help`"),
        (["allocation", "grant"], "Missing option '--project'; see `fabriek allocation grant --help`"),
        (["jobs", "--limit", "many"], "Invalid value for '--limit'"),
        (["token", "show", "one"], "see `fabriek token show --help`"),
        # Click lists a choice's values on lines of their own: still one line (found in review)
        (["org", "create", "zz", "--display-name", "Z"], "Choose from: sme, large_company,"),
    ],
)  # fmt: skip
def test_usage_errors_look_like_fabrieks_own(args: list[str], message: str) -> None:
    r = subprocess.run([FABRIEK, *args], capture_output=True, text=True)
    # One line on stderr, `error: ...`, and the exit code of fabriek's own invalid requests.
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr and "Usage:" not in r.stderr and r.stdout == ""


def test_own_errors_and_usage_errors_share_the_form(server: ServerProcess) -> None:
    own = server.cli("submit", "--env", "NOEQUALS", "--", "true")
    usage = server.cli("submit", "--cpus", "many", "--", "true")
    for r in (own, usage):
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_shell_completion_completes_commands() -> None:
    env = dict(
        os.environ, _FABRIEK_COMPLETE="complete_bash", COMP_WORDS="fabriek par", COMP_CWORD="1"
    )
    r = subprocess.run([FABRIEK], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == ["partitions"], r.stderr
    env.update(COMP_WORDS="fabriek token sh", COMP_CWORD="2")
    r = subprocess.run([FABRIEK], env=env, capture_output=True, text=True)
    assert r.stdout.split() == ["show"]
    script = subprocess.run([FABRIEK, "--show-completion", "bash"], capture_output=True, text=True)
    assert script.returncode == 0 and "_FABRIEK_COMPLETE=complete_bash" in script.stdout
