"""Geometry of the console's inline SVG charts, computed here so templates only place shapes
(SVG presentation attributes, no inline styles: the Content-Security-Policy forbids them)."""

from __future__ import annotations

from typing import Any, NamedTuple

WIDTH = 600
HEIGHT = 120


class Bar(NamedTuple):
    x: float
    y: float
    width: float
    height: float
    title: str


def usage_percent(part: int, whole: int) -> float:
    return 0.0 if whole <= 0 else min(100.0, 100.0 * part / whole)


def rate_chart(per_minute: list[dict[str, Any]]) -> dict[str, Any]:
    """Bars of requests per minute with the errors drawn over them, on a shared scale."""
    import time

    peak = max([m["requests"] for m in per_minute] + [1])
    slot = WIDTH / max(len(per_minute), 1)
    requests, errors = [], []
    for i, minute in enumerate(per_minute):
        label = time.strftime("%H:%M", time.gmtime(minute["minute"]))
        h_req = HEIGHT * minute["requests"] / peak
        h_err = HEIGHT * minute["errors"] / peak
        requests.append(Bar(i * slot, HEIGHT - h_req, max(slot - 1, 1), h_req,
                            f"{label} UTC: {minute['requests']} requests"))
        errors.append(Bar(i * slot, HEIGHT - h_err, max(slot - 1, 1), h_err,
                          f"{label} UTC: {minute['errors']} errors"))
    return {"width": WIDTH, "height": HEIGHT, "peak": peak, "requests": requests,
            "errors": errors}
