"""Prometheus metrics for the API server, one registry per app (tests build many apps)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# LLM requests range from a millisecond (/v1/models) to minutes (long generations on CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ftstudio_http_requests", "HTTP requests by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ftstudio_http_request_duration_seconds",
                                 "Time from request to the last byte of the response (streams included).",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("ftstudio_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.completion_tokens = Counter("ftstudio_completion_tokens", "Completion tokens generated.",
                                         ["model"], registry=r)
        self.queue_depth = Gauge("ftstudio_queue_depth", "Requests waiting for the model.", registry=r)
        self.running = Gauge("ftstudio_generations_running", "Generations running on the model (0 or 1).",
                             registry=r)
        self.ttft = Histogram("ftstudio_time_to_first_token_seconds",
                              "Streaming: time from request to the first content token.",
                              buckets=LATENCY_BUCKETS, registry=r)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware: it buffers streams): counts and times every HTTP request.

    The route label is the matched path template (FastAPI puts the route in the scope), so unknown
    paths collapse into one "unmatched" series instead of one per URL.
    """

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
