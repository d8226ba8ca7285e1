"""The client's types hold to the running service's /openapi.json: a field the service adds
(or stops requiring) without the client knowing fails here."""

from pathlib import Path

import httpx
import tomllib

import usage_gate
from usage_gate import types

# Schemas of routes the client does not wrap (health, the outbox's admin, BillaBear's own event
# route, the JSON value inside event properties, the gate's request, the customer view).
NOT_WRAPPED = {
    "BillaBearEvent",
    "Check",
    "CheckBatchAnswer",
    "CheckBatchRequest",
    "Checks",
    "CustomerView",
    "Health",
    "JsonWithoutNul",
    "NewEventBatch",
    "OutboxCounts",
    "OutboxEvent",
    "OutboxPage",
    "Readiness",
    "ReadinessStatus",
    "Retried",
    "RefusedBy",
    "ReservationCommit",
    "Stats",
    "LimitAction",
    "Scope",
    "Source",
    "Status",
}


def _flatten(schema: dict, schemas: dict) -> tuple:
    """A schema's properties and required fields, through ``allOf`` and ``$ref``."""
    if "$ref" in schema:
        return _flatten(schemas[schema["$ref"].rsplit("/", 1)[1]], schemas)
    properties, required = set(schema.get("properties", {})), set(schema.get("required", []))
    for part in schema.get("allOf", []):
        p, r = _flatten(part, schemas)
        properties |= p
        required |= r
    return properties, required


def test_every_schema_has_its_typed_dict_with_the_same_fields(service):
    schemas = httpx.get(f"{service.url}/openapi.json").json()["components"]["schemas"]
    missing = sorted(set(schemas) - set(types.SCHEMAS) - NOT_WRAPPED)
    assert not missing, f"schemas without a TypedDict in usage_gate.types: {missing}"
    for name, cls in types.SCHEMAS.items():
        assert name in schemas, f"{name} is not in the service's document"
        properties, required = _flatten(schemas[name], schemas)
        assert set(cls.__annotations__) == properties, f"{name}: fields differ from the document"
        assert set(cls.__required_keys__) == required, f"{name}: required fields differ from the document"
    # The status enums are the document's.
    for name in ("Status", "Source", "LimitAction"):
        assert set(getattr(types, name).__args__) == set(schemas[name]["enum"]), name


def test_the_clients_version_is_usage_gates(service):
    document = httpx.get(f"{service.url}/openapi.json").json()
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert (project["version"], usage_gate.__version__) == (document["info"]["version"],) * 2
