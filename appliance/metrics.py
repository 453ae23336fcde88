"""Prometheus metrics: counters and histograms the stages update, gauges read at scrape time.

The text exposition format (0.0.4) is small enough to write here; `REGISTRY` is process-wide so
a stage counts without the composition root threading a registry through every call. Labels
are only ever protocols, outcomes, trigger names and subscription topics: all bounded by
configuration, never by input.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

LabelValues = tuple[str, ...]
#: A gauge read at scrape time: one value, or (label values, value) pairs.
GaugeFn = Callable[[], float | Iterable[tuple[LabelValues, float]]]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.labels = name, help, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: dict[str, str]) -> LabelValues:
        if set(values) != set(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {tuple(values)}")
        return tuple(str(values[n]) for n in self.labels)

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labels, k)} {_number(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        self._values: dict[LabelValues, tuple[list[int], list[float]]] = {}  # counts per bucket; [sum, count]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._values.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            total[0] += value
            total[1] += 1

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), list(t))) for k, (c, t) in self._values.items())
        out = []
        for key, (counts, (total, count)) in items:
            for bound, n in zip(self.buckets, counts, strict=True):
                out.append(f"{self.name}_bucket{_labels((*self.labels, 'le'), (*key, _number(bound)))} {n}")
            out.append(f"{self.name}_bucket{_labels((*self.labels, 'le'), (*key, '+Inf'))} {_number(count)}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {_number(count)}")
        return out


class Gauge(_Metric):
    """A value read at scrape time; `kind="counter"` for totals kept elsewhere (monotonic)."""

    def __init__(
        self, name: str, help: str, labels: Sequence[str], read: GaugeFn, kind: str = "gauge"
    ) -> None:
        super().__init__(name, help, labels)
        self.read = read
        self.kind = kind

    def samples(self) -> list[str]:
        value = self.read()
        if isinstance(value, int | float):
            return [f"{self.name} {_number(float(value))}"]
        return [f"{self.name}{_labels(self.labels, k)} {_number(float(v))}" for k, v in value]


class Registry:
    """Metrics by name; `render()` is the body of GET /metrics."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None and type(existing) is type(metric) and not isinstance(metric, Gauge):
                return existing  # a module imported twice, or a test building a second App
            self._metrics[metric.name] = metric
            return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        metric = self._add(Counter(name, help, labels))
        assert isinstance(metric, Counter)
        return metric

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        metric = self._add(Histogram(name, help, labels, buckets))
        assert isinstance(metric, Histogram)
        return metric

    def gauge(
        self, name: str, help: str, read: GaugeFn, labels: Sequence[str] = (), kind: str = "gauge"
    ) -> None:
        """A value read when scraped (replaces an earlier gauge of the same name)."""
        self._add(Gauge(name, help, labels, read, kind))

    def render(self) -> str:
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        out = []
        for m in metrics:
            try:
                samples = m.samples()
            except Exception as e:  # a broken gauge must not take the whole page down
                out.append(f"# {m.name} unavailable: {type(e).__name__}")
                continue
            out.append(f"# HELP {m.name} {_escape_help(m.help)}")
            out.append(f"# TYPE {m.name} {m.kind}")
            out.extend(samples)
        return "\n".join([*out, "# EOF"]) + "\n"


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


def _escape_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


REGISTRY = Registry()

# -- metrics counted where the work happens ------------------------------------------------------
LINES = REGISTRY.counter("appliance_lines_ingested_total", "Lines accepted, by protocol.", ["protocol"])
BYTES = REGISTRY.counter("appliance_bytes_ingested_total", "Body bytes received, by protocol.", ["protocol"])
REJECTED = REGISTRY.counter(
    "appliance_lines_rejected_total",
    "Lines rejected (parse, type or limit errors), by protocol.",
    ["protocol"],
)
VECTOR_FALLBACKS = REGISTRY.counter(
    "appliance_lineprotocol_vector_fallbacks_total",
    "Bodies the vectorised line protocol parser failed on (a bug), parsed on the exact route instead.",
)
WAL_COMMITS = REGISTRY.counter("appliance_wal_commits_total", "WAL group commits (each one fsync).")
WAL_ENTRIES = REGISTRY.counter("appliance_wal_entries_total", "Writes committed to the WAL.")
WAL_COMMIT_SECONDS = REGISTRY.histogram(
    "appliance_wal_commit_seconds", "WAL group commit latency, fsync included."
)
QUERIES = REGISTRY.counter("appliance_queries_total", "SQL queries, by outcome.", ["outcome"])
QUERY_SECONDS = REGISTRY.histogram("appliance_query_seconds", "SQL query latency.")
# Triggers are named per database: both labels identify one.
PLUGIN_RUNS = REGISTRY.counter(
    "appliance_plugin_runs_total", "Plugin calls, by trigger.", ["database", "trigger"]
)
PLUGIN_ERRORS = REGISTRY.counter(
    "appliance_plugin_errors_total", "Plugin calls that raised, by trigger.", ["database", "trigger"]
)
PLUGIN_SECONDS = REGISTRY.histogram(
    "appliance_plugin_seconds", "Plugin call duration, by trigger.", ["database", "trigger"]
)
PLUGIN_DROPPED = REGISTRY.counter(
    "appliance_plugin_batches_dropped_total",
    "Events dropped by triggers that fell behind, by trigger.",
    ["database", "trigger"],
)
PERSISTS = REGISTRY.counter("appliance_persist_files_total", "Parquet files written by persists.")
HTTP_REFUSED = REGISTRY.counter(
    "appliance_http_refused_total",
    "Connections and requests refused by an HTTP limit or by auth, by reason (the setting that was hit;"
    " unauthorized: no valid token; forbidden: a token without the permission).",
    ["reason"],
)
