"""core/text.py: the one rule for names people read, and untrusted text made visible."""

from __future__ import annotations

import unicodedata

import pytest

from fabriek.core.errors import InvalidRequest
from fabriek.core.jobs import Resources, validate_request
from fabriek.core.tenancy import check_display_name
from fabriek.core.text import check_label, visible

# What a hostile tenant puts in a name, and what the refusal must say about it.
BAD_NAMES = [
    ("\x1b]0;pwned\x07", "U+001B, a control character"),
    ("a\x1b[2Jb", "U+001B, a control character"),
    ("csi\x9b31m", "U+009B, a control character"),  # ESC [ in one character
    ("del\x7f", "U+007F, a control character"),
    ("tab\there", "U+0009, a control character"),
    ("evil\u202egpj.exe", "U+202E (RIGHT-TO-LEFT OVERRIDE), a format character"),
    ("iso\u2066late", "U+2066 (LEFT-TO-RIGHT ISOLATE), a format character"),
    ("zero\u200bwidth", "U+200B (ZERO WIDTH SPACE), a format character"),
    ("mark\u200e", "U+200E (LEFT-TO-RIGHT MARK), a format character"),
    ("\ufeffbom", "U+FEFF (ZERO WIDTH NO-BREAK SPACE), a format character"),
    ("soft\xadhyphen", "U+00AD (SOFT HYPHEN), a format character"),
    ("line\u2028sep", "U+2028 (LINE SEPARATOR), a line separator"),
    ("para\u2029sep", "U+2029 (PARAGRAPH SEPARATOR), a paragraph separator"),
    ("no\xa0break", "U+00A0 (NO-BREAK SPACE), a space other than ' '"),
    ("tag\U000e0041", "U+E0041 (TAG LATIN CAPITAL LETTER A), a format character"),
    ("pua\ue000", "U+E000, a private-use character"),
    ("\U000effff", "U+EFFFF, an unassigned code point"),
    ("", "is empty"),
    (" lead", "begins or ends with a space"),
    ("trail ", "begins or ends with a space"),
    ("x" * 129, "is 129 characters long"),
]

GOOD_NAMES = ["train", "resnet-50 run 3", "[/]evil[bold]", "Zoë's été 训练", "🙂", "x" * 128]


@pytest.mark.parametrize("char", ["\x9b", "\u202e", "\u200b", "\x7f", "\u2028", "\xad"])
def test_isprintable_refuses_each_character_the_job_name_rule_let_through(char: str) -> None:
    # The old job-name rule refused only ord < 32 while saying "printable"; these passed it.
    assert ord(char) >= 32 and not char.isprintable()


@pytest.mark.parametrize(("name", "says"), BAD_NAMES)
def test_a_label_with_a_hidden_or_misleading_character_is_refused(name: str, says: str) -> None:
    with pytest.raises(InvalidRequest, match="the job name") as refused:
        check_label(name, what="job name", max_len=128)
    assert says in refused.value.message
    assert all(c.isprintable() for c in refused.value.message)  # the error itself is safe to show


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_names_people_use_are_accepted_as_given(name: str) -> None:
    assert check_label(name, what="job name", max_len=128) == name


@pytest.mark.parametrize(("name", "says"), BAD_NAMES)
def test_job_names_obey_the_rule(name: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        validate_request(
            name=name, argv=["true"], resources=Resources(1, 2**30), time_limit_s=60, env={}
        )
    assert says in refused.value.message


def test_display_names_obey_the_rule_after_trimming_spaces() -> None:
    assert check_display_name("  Rijksuniversiteit Groningen ") == "Rijksuniversiteit Groningen"
    for name, says in BAD_NAMES:
        if "space" in says or "characters long" in says:
            continue  # trimmed, and display names may be 256 long
        with pytest.raises(InvalidRequest, match="display name") as refused:
            check_display_name(name)
        assert says in refused.value.message


VISIBLE = [
    # (text, one line, lines kept)
    ("plain text", "plain text", "plain text"),
    ("\x1b]0;pwned\x07evil", "\\x1b]0;pwned\\x07evil", "\\x1b]0;pwned\\x07evil"),
    ("clear\x1b[2J", "clear\\x1b[2J", "clear\\x1b[2J"),
    ("\x9b31mred", "\\x9b31mred", "\\x9b31mred"),
    ("del\x7f\x00nul", "del\\x7f\\x00nul", "del\\x7f\\x00nul"),
    ("evil\u202egpj.exe", "evil\\u202egpj.exe", "evil\\u202egpj.exe"),
    ("iso\u2066\u2069", "iso\\u2066\\u2069", "iso\\u2066\\u2069"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff", "zero\\u200bwidth\\ufeff"),
    ("lrm\u200e\u200f", "lrm\\u200e\\u200f", "lrm\\u200e\\u200f"),
    ("sep\u2028\u2029", "sep\\u2028\\u2029", "sep\\u2028\\u2029"),
    ("tag\U000e0041", "tag\\U000e0041", "tag\\U000e0041"),
    ("lone\ud800", "lone\\ud800", "lone\\ud800"),
    ("a\nb\tc", "a\\nb\\tc", "a\nb\tc"),
    ("crlf\r\nok", "crlf\\r\\nok", "crlf\r\nok"),
    ("rm -rf /\rls  ", "rm -rf /\\rls  ", "rm -rf /\\rls  "),  # a lone CR hides what came before
    ("Zoë 训练 🙂 \ue000", "Zoë 训练 🙂 \ue000", "Zoë 训练 🙂 \ue000"),
    ("back\\slash [bold]", "back\\slash [bold]", "back\\slash [bold]"),
]


@pytest.mark.parametrize(("text", "line", "lines"), VISIBLE)
def test_hidden_characters_are_written_as_escapes_not_dropped(
    text: str, line: str, lines: str
) -> None:
    assert visible(text) == line
    assert visible(text, lines=True) == lines


def test_nothing_a_terminal_acts_on_survives() -> None:
    every = "".join(map(chr, range(0x110000)))
    shown = visible(every, lines=True)
    assert not any(c in shown for c in "\x1b\x9b\x7f\x00\x07\r\u202e\u200b\u2028")
    left = {unicodedata.category(c) for c in shown if not c.isprintable() and c not in "\n\t"}
    assert left == {"Co", "Zs"}  # private use (icon fonts) and spaces other than ' ' show
    shown.encode()  # no lone surrogate left either
