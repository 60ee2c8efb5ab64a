"""The API's OpenAPI description (``rest-api.yml``), used to validate request bodies.

Validating against the published schemas keeps the spec and the code in step: a field the
spec does not know is rejected, and every message names the field at fault.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).with_name("rest-api.yml")


@cache
def load_spec() -> dict[str, Any]:
    """The parsed OpenAPI document."""
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = yaml.safe_load(handle)
    return spec


@cache
def validator(schema_name: str) -> Draft202012Validator:
    """A validator for ``components/schemas/<schema_name>`` (its ``$ref``s resolved)."""
    components = load_spec()["components"]
    # The schema itself at the root rather than a $ref to it: the reference would be looked
    # up again on every validation. The components ride along for the $refs inside it.
    schema = {**components["schemas"][schema_name], "components": components}
    return Draft202012Validator(schema)


def validation_error(schema_name: str, instance: Any) -> str | None:
    """A message naming what is wrong with ``instance``, or None when it is valid."""
    error = next(iter(validator(schema_name).iter_errors(instance)), None)
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path)
    message = f"{where}: {error.message}" if where else error.message
    # A pattern says little to a person; the field's description says what is allowed.
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    if error.validator == "pattern" and description:
        message += f". {description}"
    return message
