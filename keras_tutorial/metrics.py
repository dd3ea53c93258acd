"""The server's Prometheus metrics, served at TF Serving's path for them.

Requests are counted by model, version, API, protocol and status (TF Serving's canonical code
names, so REST and gRPC add up), with latency and batch-size histograms; requests refused
before they reach the API (a foreign host or origin, a body too big or too slow, too many
connections) are counted by reason. Label values come only from what the server serves, never
from a request's text: an unknown model or version is counted as `other`, so a client cannot
grow the metrics without bound.
"""

from __future__ import annotations

import prometheus_client

PATH = "/monitoring/prometheus/metrics"  # TF Serving's --monitoring_config_file default.
OTHER = "other"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    """The metrics of one served model, in a registry of their own."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = prometheus_client.CollectorRegistry()
        self._requests = prometheus_client.Counter(
            "keras_tutorial_requests", "Requests answered, by model, version, API, protocol "
            "and status (TF Serving's canonical code).",
            ["model", "version", "api", "protocol", "status"], registry=self.registry)
        self._latency = prometheus_client.Histogram(
            "keras_tutorial_request_latency_seconds", "Time from a request's arrival at the API "
            "to its answer.", ["model", "api", "protocol"], buckets=_LATENCY_BUCKETS,
            registry=self.registry)
        self._batch_size = prometheus_client.Histogram(
            "keras_tutorial_predict_batch_size", "Examples in each predict request answered.",
            ["model", "protocol"], buckets=_BATCH_BUCKETS, registry=self.registry)
        self._refused = prometheus_client.Counter(
            "keras_tutorial_refused_requests", "Requests or connections refused before the "
            "API, by reason.", ["reason"], registry=self.registry)

    def record(self, protocol: str, api: str, model: str, version: int | None, status: str,
               seconds: float, examples: int | None = None) -> None:
        """One answered API request. `version` is the version that answered (None if none
        did); `examples` the batch size of a successful predict."""
        model = model if model == self.model_name else OTHER
        self._requests.labels(model, "" if version is None else str(version), api, protocol,
                              status).inc()
        self._latency.labels(model, api, protocol).observe(seconds)
        if examples is not None:
            self._batch_size.labels(model, protocol).observe(examples)

    def refused(self, reason: str) -> None:
        """One request or connection refused before the API; `reason` is the server's word."""
        self._refused.labels(reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and its content type."""
        return (prometheus_client.generate_latest(self.registry),
                prometheus_client.CONTENT_TYPE_LATEST)
