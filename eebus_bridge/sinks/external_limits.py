"""The ExternalLimits JSON Schema and the one check every EVerest-bound payload passes.

EVerest only logs an invalid payload and keeps its previous limit, so a malformed object would
silently leave the charger at a stale limit. The bridge therefore checks each payload itself
before sending it and treats a failure as its own bug (logged at ERROR, never sent). The
schema is loaded and compiled once, at first use.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any, cast

import jsonschema

SCHEMA_RESOURCE = "external_limits.schema.json"


@functools.cache
def external_limits_schema() -> dict[str, Any]:
    """The schema as a dict (a package resource, so it works from a wheel too)."""
    text = (
        importlib.resources.files("eebus_bridge.sinks").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    )
    return cast(dict[str, Any], json.loads(text))


@functools.cache
def _validator() -> Any:
    schema = external_limits_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def external_limits_problems(limits: object) -> list[str]:
    """Every schema violation of `limits`, one line each with its JSON path; [] when valid."""
    problems: list[str] = []
    for error in sorted(_validator().iter_errors(limits), key=lambda e: list(e.path)):
        where = "".join(f"[{part!r}]" for part in error.path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def encode_external_limits(limits: dict[str, Any]) -> bytes | list[str]:
    """The compact JSON bytes to send, or the list of problems that forbid sending it.

    NaN and infinities pass a JSON Schema number check in Python but are not JSON, so the
    encoder rejects them too.
    """
    problems = external_limits_problems(limits)
    if problems:
        return problems
    try:
        text = json.dumps(limits, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return [f"(encoding): {exc}"]
    return text.encode("utf-8")
