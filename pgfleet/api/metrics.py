"""The API's Prometheus metrics, served at its own ``/metrics``: requests per endpoint,
method and status, and their latency, as every HTTP server exports them (the fleet's
endpoint, :mod:`pgfleet.ops.metrics`, reads the data in PostgreSQL; what one API process
answered lives in that process). Endpoints are labelled by their route (``/v1/search``),
never by the raw path, so that a caller cannot make up labels; paths no route matches are
counted as ``unmatched``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry(auto_describe=True)
#: seconds; from a cache hit to a long embeddings request
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5.0,
           10.0, 30.0)
REQUESTS = Counter("pgfleet_api_requests", "HTTP requests answered by the API",
                   ["endpoint", "method", "status"], registry=REGISTRY)
LATENCY = Histogram("pgfleet_api_request_duration_seconds",
                    "Time from a request's arrival to the end of its response",
                    ["endpoint", "method"], buckets=BUCKETS, registry=REGISTRY)
BATCH = Histogram("pgfleet_api_pass_texts", "Texts per forward pass of the API's engines",
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=REGISTRY)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class Middleware:
    """Counts and times every HTTP request (pure ASGI: no buffering of bodies)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            REQUESTS.labels(endpoint, method, str(status["code"])).inc()
            LATENCY.labels(endpoint, method).observe(time.perf_counter() - started)
