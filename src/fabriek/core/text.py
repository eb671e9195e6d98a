"""Text that people read: the rule for names and labels, and how untrusted text is shown.

Tenants are mutually distrustful, and what one of them names (a job, a token, a file its job
wrote, a line of its log) is read on another's terminal: a colleague's, a manager's, an
operator's. Characters a terminal acts on (ESC starts a sequence that can clear the screen, retitle
the window, rewrite the clipboard; U+009B is ESC [ in one byte) or shows as nothing (U+200B,
U+FEFF) or in another order (U+202E) must not reach it raw. Names refuse them; everything else
(logs, file names, free text, older rows) is shown with them written as escapes.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from fabriek.core.errors import InvalidRequest

# What each refused or escaped Unicode category is, in an error message.
_KINDS = {
    "Cc": "a control character",
    "Cf": "a format character (invisible, or reordering the text around it)",
    "Cs": "a lone surrogate (not a character)",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than ' '",
}

# Shown as escapes: what a terminal acts on (C0, DEL, C1), what it shows as nothing or reorders
# (format characters: bidi overrides and isolates, zero-width ones, the BOM, soft hyphen), line
# and paragraph separators, lone surrogates (they cannot be written as UTF-8 at all) and code
# points this Python's Unicode does not know (a newer version may have made one a format
# character). Private-use characters (icon fonts) and unusual spaces are shown as themselves.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})

# Anything but printable ASCII might be hidden; printable ASCII never is.
_SUSPECT = re.compile(r"[^\x20-\x7e]+")
_SUSPECT_IN_LINES = re.compile(r"(?:\r\n|[^\x20-\x7e\n\t])+")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}  # as repr() writes them


@lru_cache(maxsize=4096)
def _escaped(char: str) -> str:
    if unicodedata.category(char) not in HIDDEN_CATEGORIES:
        return char
    point = ord(char)
    if char in _SHORT:
        return _SHORT[char]
    if point <= 0xFF:
        return f"\\x{point:02x}"
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def _escaped_run(run: str) -> str:
    # isprintable() is a fast "nothing hidden here" for most text beyond ASCII (4x on Chinese).
    return run if run.isprintable() else "".join(map(_escaped, run))


def _run(match: re.Match[str]) -> str:
    return _escaped_run(match.group())


def _run_in_lines(match: re.Match[str]) -> str:
    # CR LF ends a line as LF does; a lone CR does not.
    return "\r\n".join(map(_escaped_run, match.group().split("\r\n")))


def visible(text: str, *, lines: bool = False) -> str:
    """`text` with every hidden character (HIDDEN_CATEGORIES) written as the escape Python's
    repr() uses: ESC as `\\x1b`, U+009B as `\\x9b`, U+202E as `\\u202e`. Nothing is dropped, so a
    reader sees that something was there. With `lines` (a log, a text of several lines) newline,
    tab and CR LF stay as they are; a lone CR, which lets a line overwrite what it showed, does not.

    A backslash is left as it is, so `\\x1b` may also have been typed as those four characters:
    `--json` gives the exact text."""
    return _SUSPECT_IN_LINES.sub(_run_in_lines, text) if lines else _SUSPECT.sub(_run, text)


def _refused(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")


def check_label(text: str, *, what: str, max_len: int) -> str:
    """The one rule for names and labels people read (a job's name, a token's, a display name):
    1 to `max_len` characters that each show as themselves (str.isprintable: no control, format,
    separator, surrogate, private-use or unassigned character, no space but ' '), not beginning
    or ending with a space. Returns `text`; raises InvalidRequest saying what it refused."""
    rule = (
        f"a {what} is 1 to {max_len} characters that each show as themselves: letters, digits, "
        "punctuation, symbols and ' ', not at its start or end"
    )
    if not text:
        raise InvalidRequest(f"the {what} is empty; {rule}")
    if len(text) > max_len:
        raise InvalidRequest(f"the {what} is {len(text)} characters long; {rule}")
    for char in text:
        if not char.isprintable():
            kind = _KINDS.get(unicodedata.category(char), "not printable")
            raise InvalidRequest(f"the {what} holds {_refused(char)}, {kind}; {rule}")
    if text[0] == " " or text[-1] == " ":
        raise InvalidRequest(f"the {what} begins or ends with a space; {rule}")
    return text
