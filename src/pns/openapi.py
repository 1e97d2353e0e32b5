"""The OpenAPI description of the API, served at ``GET /openapi.json``.

One path per action (``POST /api/pns/{action}``, an alias of ``POST /api/pns/`` with the
``action`` header), so each action's body and answer can be described; request schemas are
generated from the same structs that decode the requests.
"""

from __future__ import annotations

from typing import Any

import msgspec

from . import __version__
from .api import ACTIONS
from .errors import DEFAULT_MSG

_SUMMARIES = {
    "bindAXB": "Bind A and B to a virtual number X chosen from the account's pool",
    "bindAXBExtension": "Bind A (and optionally B) to X plus an extension",
    "unbindAXB": "End a binding by bindId or customerBindId",
    "getAXBList": "List the account's active bindings, paged",
    "queryAXB": "The switch's question: whom does caller reach by dialling did?",
    "reportCall": "The switch reports a finished call (switch role)",
    "getCallRecords": "List call records by time range or bindId, paged",
    "redeliverCallRecord": "Queue one more delivery of a call record",
}

_HEADERS = [
    ("accessKey", "The account's access key"),
    ("bizType", "Must be 5"),
    ("ts", "Epoch milliseconds, within 60 s of the server clock"),
    ("sign", "Lowercase hex MD5 (or SHA-256) over headers, raw body and secret"),
]


def _envelope_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["code", "msg", "requestId"],
        "properties": {
            "code": {"type": "integer", "enum": sorted(int(c) for c in DEFAULT_MSG)},
            "msg": {"type": "string"},
            "requestId": {"type": "string", "pattern": "^[0-9]{19}$"},
            "data": {"type": "object"},
        },
    }


def build_openapi() -> dict[str, Any]:
    (schemas, components) = msgspec.json.schema_components(
        list(a.body for a in ACTIONS.values()), ref_template="#/components/schemas/{name}")
    envelope = {"$ref": "#/components/schemas/Envelope"}
    parameters = [
        {"name": name, "in": "header", "required": True, "description": text,
         "schema": {"type": "string"}}
        for name, text in _HEADERS
    ]
    paths: dict[str, Any] = {}
    for (action, _), schema in zip(ACTIONS.items(), schemas, strict=True):
        paths[f"/api/pns/{action}"] = {"post": {
            "operationId": action,
            "summary": _SUMMARIES[action],
            "parameters": parameters,
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "An envelope; code 0 is success",
                        "content": {"application/json": {"schema": envelope}}},
                "413": {"description": "Body over 64 KiB",
                        "content": {"application/json": {"schema": envelope}}},
                "500": {"description": "Unexpected failure (code 10009)",
                        "content": {"application/json": {"schema": envelope}}},
            },
        }}
    paths["/healthz"] = {"get": {"operationId": "healthz", "responses": {
        "200": {"description": "The store answers"},
        "503": {"description": "The store does not answer"}}}}
    components["Envelope"] = _envelope_schema()
    return {
        "openapi": "3.1.0",
        "info": {"title": "pns — privacy number service (NXCloud PNS compatible)",
                 "version": __version__},
        "paths": paths,
        "components": {"schemas": components},
    }


OPENAPI_JSON = msgspec.json.encode(build_openapi())
