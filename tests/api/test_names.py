"""Names people read (a job's, a token's, a display name) obey one rule through the API, on both
databases: a character a terminal acts on or hides is a clear 422, never stored, never a 500."""

from __future__ import annotations

import pytest

from tests.helpers import ServerProcess

# id: (name, what the refusal says)
BAD = {
    "esc": ("\x1b]0;pwned\x07", "U+001B, a control character"),
    "csi": ("a\x9b2J", "U+009B, a control character"),
    "del": ("del\x7f", "U+007F, a control character"),
    "rlo": ("evil\u202egpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE), a format character"),
    "zwsp": ("zero\u200bwidth", "U+200B (ZERO WIDTH SPACE), a format character"),
    "lsep": ("line\u2028sep", "U+2028 (LINE SEPARATOR), a line separator"),
    "lead": (" lead", "begins or ends with a space"),
    "nul": ("nul\x00", ""),  # refused at the edge (NUL in any string), maybe in other words
}


@pytest.mark.parametrize(("name", "says"), BAD.values(), ids=BAD.keys())
def test_a_job_name_with_a_hidden_character_is_a_clear_422(
    server: ServerProcess, name: str, says: str
) -> None:
    with server.http() as http:
        before = len(http.get("/jobs", params={"limit": 1000}).json())
        r = http.post("/jobs", json={"name": name, "argv": ["true"], "cpus": 1})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and says in error["message"], error
        assert len(http.get("/jobs", params={"limit": 1000}).json()) == before


@pytest.mark.parametrize(("name", "says"), BAD.values(), ids=BAD.keys())
def test_token_and_display_names_obey_the_same_rule(
    server: ServerProcess, name: str, says: str
) -> None:
    with server.http() as http:
        r = http.post("/tokens", json={"name": name, "days": 1})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert says in r.json()["error"]["message"]
        if name == " lead":
            return  # display names are trimmed
        body = {"name": "names-org", "display_name": name, "kind": "university"}
        r = http.post("/organisations", json=body)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", r.text
        assert says in r.json()["error"]["message"]
