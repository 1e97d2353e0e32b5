"""The OpenAPI description of the API, served at ``GET /openapi.json``.

One path per action (``POST /api/pns/{action}``, an alias of ``POST /api/pns/`` with the
``action`` header), so each action's body and answer can be described; request schemas are
generated from the same structs that decode the requests.
"""

from __future__ import annotations

import re
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
    admin_paths, admin_schemas = _admin_paths()
    paths.update(admin_paths)
    components.update(admin_schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "pns — privacy number service (NXCloud PNS compatible)",
                 "version": __version__},
        "tags": [{"name": "admin", "description": "The operators' admin API (Bearer token), "
                  "separate from the NXCloud-compatible API"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "operatorToken": {"type": "http", "scheme": "bearer",
                              "description": "A token from `pns operator create`"}}},
    }


def _admin_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The admin API, one operation per route of ``pns.admin.api.ROUTES``."""
    from .admin.api import PREFIX, ROUTES

    bodies = [route.body for route in ROUTES if route.body is not None]
    (schemas, components) = msgspec.json.schema_components(
        bodies, ref_template="#/components/schemas/{name}")
    body_schema = dict(zip(bodies, schemas, strict=True))
    components["AdminError"] = {"type": "object", "required": ["error"],
                                "properties": {"error": {"type": "string"}}}
    error = {"content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/AdminError"}}}}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        path = PREFIX + route.pattern
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", route.pattern)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        operation: dict[str, Any] = {
            "operationId": "admin_" + route.method.lower() + "_"
            + re.sub(r"\W+", "_", route.pattern).strip("_"),
            "tags": ["admin"], "summary": route.summary,
            "security": [{"operatorToken": []}], "parameters": parameters,
            "responses": {
                "201" if route.pattern == "accounts" and route.method == "POST" else "200": {
                    "description": "Done", "content": {"application/json": {
                        "schema": {"type": "object"}}}},
                "400": {"description": "Invalid input", **error},
                "401": {"description": "No valid operator token", **error},
                "403": {"description": "A viewer asked to change something", **error},
                "404": {"description": "No such thing", **error},
                "429": {"description": "Too many wrong tokens from this address", **error},
            },
        }
        if route.body is not None:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": body_schema[route.body]}}}
        elif route.pattern == "numbers/import":
            operation["requestBody"] = {"required": True, "content": {
                "text/plain": {"schema": {"type": "string"}}}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return paths, components


OPENAPI_JSON = msgspec.json.encode(build_openapi())
