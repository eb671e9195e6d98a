"""cli/output.py: untrusted text reaches a terminal with its hidden characters visible."""

from __future__ import annotations

import io
import json

import pytest
from rich.table import Table

from fabriek.cli import output
from fabriek.cli.output import JobOutput, _Console, shown, shown_lines

ATTACKS = [
    # (what a tenant wrote, how a reader sees it)
    ("\x1b]0;pwned\x07evil", "\\x1b]0;pwned\\x07evil"),  # retitles the window (OSC 0)
    ("\x1b]52;c;cm0gLXJmIH4=\x07", "\\x1b]52;c;cm0gLXJmIH4=\\x07"),  # writes the clipboard
    ("clear\x1b[2J\x1b[H", "clear\\x1b[2J\\x1b[H"),
    ("\x9b2J", "\\x9b2J"),
    ("report\u202efdp.exe", "report\\u202efdp.exe"),
    ("zero\u200bwidth", "zero\\u200bwidth"),
    ("two\nlines", "two\\nlines"),  # a file named so looks like two files
    ("[bold]loud[/] :skull:", "[bold]loud[/] :skull:"),  # markup and emoji codes as typed
]


def rendered(*objects: object, terminal: bool = False) -> str:
    out = io.StringIO()
    console = _Console(file=out, force_terminal=terminal, width=200)
    console.print(*objects, highlight=False)
    return out.getvalue()


@pytest.mark.parametrize(("text", "seen"), ATTACKS)
def test_shown_text_reads_as_typed_with_its_controls_as_escapes(text: str, seen: str) -> None:
    assert rendered(f"name {shown(text)}") == f"name {seen}\n"
    table = Table("ID", "NAME", box=None)
    table.add_row("1", shown(text))
    out = rendered(table)
    assert seen in out and "\x1b" not in out and "\u202e" not in out


@pytest.mark.parametrize(("text", "seen"), ATTACKS[:6])
def test_a_value_that_missed_shown_still_cannot_act_on_the_terminal(text: str, seen: str) -> None:
    # The console's own net: every string it renders, a table cell too, is made visible.
    out = rendered(f"name {text}", terminal=True)
    assert seen in out
    assert all(seq not in out for seq in ("\x1b]", "\x1b[2J", "\x9b", "\u202e", "\u200b"))
    table = Table("NAME", box=None)
    table.add_row(text)
    assert seen in rendered(table)


def test_the_consoles_own_colours_still_reach_a_terminal() -> None:
    assert "\x1b[1;31merror:\x1b[0m" in rendered("[bold red]error:[/] x", terminal=True)


def test_a_review_comment_keeps_its_lines() -> None:
    assert rendered(shown_lines("good\n\tplan \x1b[2J")) == "good\n        plan \\x1b[2J\n"


def chunks_through(chunks: list[bytes], raw: bool = False) -> bytes:
    out = io.BytesIO()
    writer = JobOutput(out, raw=raw)
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
    return out.getvalue()


@pytest.mark.parametrize(
    ("chunks", "seen"),
    [
        ([b"loss 0.1\n", b"\x1b[2Jgone\n"], b"loss 0.1\n\\x1b[2Jgone\n"),
        ([b"\x1b]0;pwned\x07\n"], b"\\x1b]0;pwned\\x07\n"),
        ([b"\xc2\x9b2J"], b"\\x9b2J"),  # C1 CSI, UTF-8 encoded
        ([b"\xe2\x80", b"\xaeevil"], b"\\u202eevil"),  # U+202E split between two reads
        (["训练".encode()[:4], "训练".encode()[4:]], "训练".encode()),
        ([b"windows\r", b"\nline\r\n"], b"windows\r\nline\r\n"),  # CR LF split between reads
        ([b"50%\r", b"100%\n"], b"50%\\r100%\n"),  # a lone CR would overwrite the line
        ([b"tab\there\n"], b"tab\there\n"),
        ([b"bad \xff byte\n"], b"bad \\xff byte\n"),
        ([b"ends in \xe2\x80"], b"ends in \\xe2\\x80"),  # cut off mid-character: shown at close
    ],
)
def test_job_output_is_shown_with_controls_visible(chunks: list[bytes], seen: bytes) -> None:
    assert chunks_through(chunks) == seen


def test_raw_job_output_is_passed_byte_for_byte() -> None:
    chunks = [b"\x1b[32mgreen\x1b[0m\r", b"\n\xff\xe2\x80", b"\xae"]
    assert chunks_through(chunks, raw=True) == b"".join(chunks)


def test_json_output_is_exact_and_ascii(capsys: pytest.CaptureFixture[str]) -> None:
    data = {"name": "evil\u202egpj\x1b[2J\u200b", "files": ["\x1b]0;pwned\x07evil"]}
    output.print_json(data)
    printed = capsys.readouterr().out
    assert printed.isascii() and "\x1b" not in printed and "\\u202e" in printed
    assert json.loads(printed) == data
