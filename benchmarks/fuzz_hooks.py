"""Schemathesis hooks of benchmarks/fuzz_api.py (loaded through SCHEMATHESIS_HOOKS=fuzz_hooks).

Two jobs:
- Count every response by status (the fuzzer's own report counts test cases, not requests), and
  keep the first few server errors with the request that caused them; written as JSON to
  $FUZZ_COUNTS when the run ends.
- Keep the fuzzer signed in: with an operator token it would soon revoke that very token or
  take its own operator role away, and every later request would be a 401. A request that would
  do so is pointed at another (non-existent) token or user instead; every other request is sent
  as generated.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections import Counter
from typing import Any

import schemathesis

_lock = threading.Lock()
_statuses: Counter[int] = Counter()
_server_errors: list[dict[str, Any]] = []
_OWN_TOKEN_ID = os.environ.get("FUZZ_OWN_TOKEN_ID", "")
_OWN_USER = os.environ.get("FUZZ_OWN_USER", "")


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    method, path = case.operation.method.upper(), case.operation.path
    params = case.path_parameters or {}
    own_token = str(params.get("token_id")) == _OWN_TOKEN_ID
    if method == "DELETE" and path.endswith("/tokens/{token_id}") and own_token:
        params["token_id"] = 2_000_000_000
    if method == "PATCH" and path.endswith("/users/{user}") and params.get("user") == _OWN_USER:
        params["user"] = "not-the-fuzzer"


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    status = int(response.status_code)
    with _lock:
        _statuses[status] += 1
        if status >= 500 and len(_server_errors) < 50:
            _server_errors.append(
                {
                    "status": status,
                    "method": case.operation.method.upper(),
                    "path": case.operation.path,
                    "curl": case.as_curl_command(),
                    "body": response.text[:500],
                }
            )


def _write() -> None:
    target = os.environ.get("FUZZ_COUNTS")
    if not target:
        return
    with _lock:
        data = {
            "statuses": {str(k): v for k, v in sorted(_statuses.items())},
            "server_errors": _server_errors,
        }
    with open(target, "w") as f:
        json.dump(data, f, indent=1)


atexit.register(_write)
