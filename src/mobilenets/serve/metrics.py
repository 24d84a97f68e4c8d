"""Prometheus metrics (``GET /metrics``), in a registry of their own, and the middleware that
counts every request.

Names follow the Prometheus conventions (``_total`` counters, ``_seconds`` histograms) and what
TorchServe and Triton report: requests by endpoint and status, errors by code, request latency,
batch sizes, model time per batch, time waiting for a batch, and the queue depth.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE")  # others are counted as "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, endpoints: tuple[str, ...], info: dict[str, str]) -> None:
        disable_created_metrics()  # no ``*_created`` timestamp series (process-wide): they double the page
        self.endpoints = endpoints
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mobilenets_requests", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.errors = Counter("mobilenets_errors", "requests answered with an error, by error code", ["code"],
                              registry=r)
        self.latency = Histogram("mobilenets_request_duration_seconds", "time from request to response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("mobilenets_requests_in_flight", "requests being handled", registry=r)
        self.batch_size = Histogram("mobilenets_batch_size", "requests per inference batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.model_time = Histogram("mobilenets_inference_duration_seconds", "model time per batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("mobilenets_queue_duration_seconds", "time a request waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mobilenets_queue_depth", "requests waiting for a batch", registry=r)
        Gauge("mobilenets_model_info", "the model served (labels); always 1", list(info), registry=r).labels(
            **info).set(1)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.model_time.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app):
        """ASGI middleware: count and time every HTTP request by endpoint and final status."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            status = 500  # unless a response starts
            started = time.perf_counter()

            async def send_status(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            self.in_flight.inc()
            try:
                await app(scope, receive, send_status)
            finally:
                self.in_flight.dec()
                self.requests.labels(endpoint, method, str(status)).inc()
                self.latency.labels(endpoint).observe(time.perf_counter() - started)

        return counted
