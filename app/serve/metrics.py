"""Prometheus metrics for the API server, one registry per app (tests build many apps).

Serving: requests, latency, time to first token, inter-token latency, tokens, the running batch, the
queue, decode tokens/s. The machine: GPU memory and utilisation through NVML (absent without a GPU).
Training: the runs in the runs folder (app/serve/train_metrics.py). docker/grafana/ draws all of them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# LLM requests range from a millisecond (/v1/models) to minutes (long generations on CPU).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# One decode step: milliseconds on a GPU, tenths of a second for a batch on a laptop CPU.
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)
RATE_WINDOW_S = 10.0


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
        self.queue_depth = Gauge("ftstudio_queue_depth", "Requests waiting to join the running batch.", registry=r)
        self.running = Gauge("ftstudio_batch_size", "Requests decoding together in the running batch.",
                             registry=r)
        self.inflight = Gauge("ftstudio_requests_in_flight", "Generations admitted and not yet ended.", registry=r)
        self.tokens_per_s = Gauge("ftstudio_generation_tokens_per_second",
                                  f"Completion tokens per second over the last {RATE_WINDOW_S:g} s.", registry=r)
        self.ttft = Histogram("ftstudio_time_to_first_token_seconds",
                              "Time from request to the first content token.", buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("ftstudio_inter_token_latency_seconds",
                             "Time between consecutive content deltas of one response.", buckets=ITL_BUCKETS,
                             registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self.tokens_per_s.set_function(self._rate)

    def bind(self, load: Callable[[], Any], inflight: Callable[[], int]) -> None:
        """Read the batch and queue from the backend at scrape time."""
        self.running.set_function(lambda: load().running)
        self.queue_depth.set_function(lambda: load().waiting)
        self.inflight.set_function(inflight)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.completion_tokens.labels(model).inc(completion)
        self._recent.append((time.monotonic(), completion))

    def _rate(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / RATE_WINDOW_S

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class GpuCollector(Collector):
    """GPU memory and utilisation per device through NVML; no series at all on a machine without one."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound on CPU machines; no GPU, no metrics
            self._nvml = None

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self._nvml is None:
            return
        nvml = self._nvml
        used = GaugeMetricFamily("ftstudio_gpu_memory_used_bytes", "GPU memory in use.", labels=["gpu"])
        total = GaugeMetricFamily("ftstudio_gpu_memory_total_bytes", "GPU memory installed.", labels=["gpu"])
        util = GaugeMetricFamily("ftstudio_gpu_utilization_ratio", "Share of time the GPU was busy (0-1).",
                                 labels=["gpu"])
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                used.add_metric([str(i)], float(memory.used))
                total.add_metric([str(i)], float(memory.total))
                util.add_metric([str(i)], nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
        except nvml.NVMLError:
            return
        yield from (used, total, util)


def standard_collectors(runs_dir: Path | None) -> list[Collector]:
    """The machine's GPUs and, when a runs folder is given, the training runs in it."""
    collectors: list[Collector] = [GpuCollector()]
    if runs_dir is not None:
        from app.serve.train_metrics import TrainingCollector

        collectors.append(TrainingCollector(runs_dir))
    return collectors


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
