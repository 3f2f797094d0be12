"""What ``uit serve`` tells a Prometheus server (``GET /metrics``) and its access log.

Requests are counted and timed by route (the route's pattern, ``/images/{name}``, never an
image's name: the label set stays small) and status; a search's time is split into encoding
the text and asking the index; the gallery's size and the index's kind are constant gauges.
The access log is one JSON line a request on stderr (logger ``uit.access``), never the token.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
access_log = logging.getLogger("uit.access")


class ServeMetrics:
    """The metrics of one application, in a registry of its own (two apps in one process, as in
    the tests and the benchmark, do not share counts)."""

    def __init__(self, images: int, index_kind: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("uit_requests", "Requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("uit_request_seconds", "Time to answer a request, by route.",
                                 ["route", "method"], buckets=SECONDS, registry=r)  # fmt: skip
        self.encode = Histogram("uit_encode_seconds", "Time to encode a query's text.",
                                buckets=SECONDS, registry=r)  # fmt: skip
        self.index = Histogram("uit_index_seconds", "Time to rank the gallery for a query.",
                               buckets=SECONDS, registry=r)  # fmt: skip
        self.images = Gauge("uit_gallery_images", "Images in the gallery served.", registry=r)
        self.kind = Gauge("uit_index_info", "The index searched (1 for its kind).", ["kind"],
                          registry=r)  # fmt: skip
        self.set_gallery(images, index_kind)

    def set_gallery(self, images: int, index_kind: str) -> None:
        """The gallery served now (at start, and after each reload)."""
        self.images.set(images)
        self.kind.clear()
        self.kind.labels(kind=index_kind).set(1)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route, method=method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def log_access(record: dict[str, Any]) -> None:
    access_log.info("%s", json.dumps(record, ensure_ascii=False))


def send_access_log_to_stderr() -> None:
    """The access log's lines, bare, on stderr (the server's edge calls this once)."""
    if access_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
