"""Prometheus metrics: the gateway's requests, and the state of the whole system read at scrape time.

Scans by status and label come from the database, the queue depth from the broker, and stage timings from a
histogram that workers (on any machine) add to in Redis, so one scrape of any gateway sees the whole system.
Under gunicorn the request metrics are shared between processes (`PROMETHEUS_MULTIPROC_DIR`, set by `mesoscan serve`).
The system part is read at most every `metrics_cache_s` per process (a scrape flood costs no database work), and
`/metrics` is behind a bearer token (`server.app`).
"""

from __future__ import annotations

import logging
import math
import os
import threading

from cachetools import TLRUCache
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "mesoscan_http_requests_total", "HTTP requests answered by the gateway", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "mesoscan_http_request_duration_seconds",
    "Time to answer a request",
    ["method", "endpoint"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SUBMISSIONS = Counter("mesoscan_submissions_total", "URLs submitted, by what became of them", ["outcome"])

STAGES = ("fetch", "decode", "detect", "classify", "total")
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STAGE_KEY = "mesoscan:metrics:stage_seconds"


def record_stage_timings(redis_client, timings_ms: dict[str, float]) -> None:
    """Add one analysed scan's stage timings to the shared histogram (workers call this; best effort)."""
    pipe = redis_client.pipeline(transaction=False)
    for stage in STAGES:
        if stage not in timings_ms:
            continue
        seconds = float(timings_ms[stage]) / 1000
        bucket = next((str(b) for b in STAGE_BUCKETS if seconds <= b), "+Inf")
        pipe.hincrby(STAGE_KEY, f"{stage}|{bucket}", 1)
        pipe.hincrbyfloat(STAGE_KEY, f"{stage}|sum", seconds)
    pipe.execute()


def queue_keys(queue: str) -> list[str]:
    """The Redis lists kombu keeps a queue in (one per priority step; plain messages go to the first)."""
    sep = "\x06\x16"
    return [queue] + [f"{queue}{sep}{step}" for step in (3, 6, 9)]


_cache_lock = threading.Lock()
_cache: TLRUCache[tuple, list] = TLRUCache(16, ttu=lambda key, _families, now: now + key[-1])
"""(database, broker, queue, seconds to keep) → the families read then."""


class SystemCollector:
    """Collects, at scrape time, what no single process counts: scans, queue depth, stage timings; the families
    are kept for `metrics_cache_s` seconds per process."""

    def __init__(self, settings):
        self.settings = settings

    def collect(self):
        s = self.settings
        key = (s.database_url, s.broker_url, s.queue, getattr(s, "metrics_cache_s", 0))
        with _cache_lock:  # one scrape at a time reads the system; the others wait for its answer
            if (families := _cache.get(key)) is None:
                families = [*self._scans(), *self._broker()]
                _cache[key] = families
        yield from families

    def _scans(self):
        from server.db import get_engine
        from server.models import Scan

        gauge = GaugeMetricFamily(
            "mesoscan_scans", "Scan records by status and verdict label", labels=["status", "label"]
        )
        try:
            engine, _ = get_engine(self.settings.database_url)
            with engine.connect() as connection:
                rows = connection.execute(
                    select(Scan.status, Scan.label, func.count()).group_by(Scan.status, Scan.label)
                ).all()
        except Exception as exc:
            log.warning("metrics: database unavailable: %s", exc)
            return
        for status, label, count in rows:
            gauge.add_metric([status, label or ""], count)
        yield gauge

    def _broker(self):
        from server.health import is_redis, redis_client

        if not is_redis(self.settings.broker_url):
            return
        try:
            client = redis_client(self.settings.broker_url)
            pipe = client.pipeline(transaction=False)
            for key in queue_keys(self.settings.queue):
                pipe.llen(key)
            depth = sum(pipe.execute())
            stages = client.hgetall(STAGE_KEY)
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", exc)
            return
        yield GaugeMetricFamily("mesoscan_queue_depth", "Scans waiting in the broker's queue", value=depth)
        yield self._stage_histogram(stages)

    @staticmethod
    def _stage_histogram(raw: dict) -> HistogramMetricFamily:
        values = {k.decode() if isinstance(k, bytes) else k: float(v) for k, v in raw.items()}
        family = HistogramMetricFamily(
            "mesoscan_stage_seconds", "Time scans spent in each stage (analysed scans)", labels=["stage"]
        )
        for stage in STAGES:
            total, buckets = 0.0, []
            for bound in (*STAGE_BUCKETS, math.inf):
                name = "+Inf" if bound == math.inf else str(bound)
                total += values.get(f"{stage}|{name}", 0.0)
                buckets.append((name, total))
            family.add_metric([stage], buckets, sum_value=values.get(f"{stage}|sum", 0.0))
        return family


class _Combined:
    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        for collector in self.collectors:
            yield from collector.collect()


def render(settings) -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    return generate_latest(_Combined(registry, SystemCollector(settings)))  # type: ignore[arg-type]
