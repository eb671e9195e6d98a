"""The field types of what clients send, each stating in the schema exactly what it accepts.

Pydantic's lax mode would take `0` for a boolean, `true` for a number, `"0.5"` for a time and a
64-bit id for a 32-bit column; these types take only what their OpenAPI schema says, so a client
(or a fuzzer) that reads /openapi.json learns the rules instead of meeting a 500 or a surprise.
Every request model derives from `Input`: unknown fields refused, no string holds U+0000
(PostgreSQL cannot store it; no name, text or argument needs it), strings bounded by default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
)

from fabriek.core.tenancy import ORG_NAME, PROJECT_NAME, USER_NAME

# The database's ids are 32-bit signed integers on PostgreSQL (SQLite's are 64-bit): larger ids
# cannot exist on either, so they are refused alike, by the schema, before any query.
MAX_ID = 2**31 - 1
# Any string a client sends, unless its field says otherwise (free texts are longer).
MAX_STRING = 4096
MAX_TEXT = 64 * 1024


def _integral(value: object) -> object:
    """An integer, or a float with nothing after the point (JSON Schema counts 714.0 as an
    integer); not a boolean, not a string."""
    if isinstance(value, (bool, str)):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


Flag = Annotated[bool, Strict()]
Count = Annotated[int, BeforeValidator(_integral)]
# An integer is a number too; Infinity, NaN and 1e999 (Python's JSON parser takes them) are not:
# PostgreSQL's json refuses them (a 500) and SQLite stores them as null.
Number = Annotated[float, Strict(), AllowInfNan(False)]
Id = Annotated[int, BeforeValidator(_integral), Field(ge=1, le=MAX_ID)]


def id_path(what: str) -> Any:
    """A path parameter holding an id of `what`s (1 to MAX_ID)."""
    return Path(ge=1, le=MAX_ID, description=f"{what} id.")


# Names, as the core's rules check them. The schema states each rule so that a client learns it
# from /openapi.json; the services enforce it, with a sentence that says the rule in words
# (better than a regular expression in an error), so here it is stated, not checked.
SLUG = f"^{ORG_NAME.pattern}$"  # organisations, pools, calls
PROJECT = f"^{PROJECT_NAME.pattern}$"
USER = f"^{USER_NAME.pattern}$"
ZONE = "^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$"  # a grid zone: NL, DE-LU (services/facility._zone)
# A name or title people read (core.text.check_label says the rest of the rule).
Label = Annotated[str, Field(json_schema_extra={"minLength": 1, "maxLength": 256})]
ShortLabel = Annotated[str, Field(json_schema_extra={"minLength": 1, "maxLength": 128})]
SlugName = Annotated[str, Field(max_length=64, json_schema_extra={"pattern": SLUG})]
ProjectName = Annotated[str, Field(max_length=128, json_schema_extra={"pattern": PROJECT})]
UserName = Annotated[str, Field(max_length=128, json_schema_extra={"pattern": USER})]


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError(
            "a time is an RFC 3339 date-time with its timezone, e.g. 2026-12-07T14:00:00Z"
        )
    if not isinstance(value, (str, datetime)):
        raise ValueError("a time is an RFC 3339 date-time string, e.g. 2026-12-07T14:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """The same moment in UTC, as the database stores it: 0001-01-01T00:00+01:00 has none."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time between the years 1 and 9999 in UTC") from None


# Not a number of seconds since 1970 (which pydantic would take), not a bare date: a date-time.
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]


def _nul_free(value: object) -> object:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("must not contain the NUL character (U+0000)")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _nul_free(key)
            _nul_free(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _nul_free(item)
    return value


NUL_FREE = "^[^\\x00]*$"


def _state_nul_free(schema: dict[str, Any]) -> None:
    """Say in the schema what Input checks: no string holds U+0000 (a string with a pattern of
    its own states its rule already)."""
    if (
        schema.get("type") == "string"
        and "pattern" not in schema
        and "enum" not in schema
        and schema.get("format") != "date-time"
    ):
        schema["pattern"] = NUL_FREE
    for key in ("properties", "patternProperties"):
        for sub in schema.get(key, {}).values():
            _state_nul_free(sub)
    for key in ("items", "additionalProperties", "propertyNames"):
        if isinstance(schema.get(key), dict):
            _state_nul_free(schema[key])
    for sub in schema.get("anyOf", []):
        _state_nul_free(sub)


class Input(BaseModel):
    """A request body: unknown fields refused, strings NUL-free and at most MAX_STRING long
    unless their field allows more."""

    model_config = ConfigDict(
        extra="forbid",
        str_max_length=MAX_STRING,
        json_schema_extra=lambda schema, _: _state_nul_free(schema),
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        return _nul_free(value)
