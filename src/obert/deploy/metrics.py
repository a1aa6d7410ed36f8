"""Counters, gauges and histograms in Prometheus' text format (version 0.0.4), for
``obert serve``'s ``GET /metrics``. Updated from the server's event loop only, so no locks."""

from __future__ import annotations

import bisect
import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(v: str) -> str:
    return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _num(x: float) -> str:
    if x == math.inf:
        return "+Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Metric:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    """A count that only grows, by label values."""

    def __init__(self, name: str, help_text: str, kind: str = "counter") -> None:
        super().__init__(name, kind, help_text)
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        rows = self.values or {(): 0.0}
        return self.header() + [f"{self.name}{_labels(dict(k))} {_num(v)}"
                                for k, v in sorted(rows.items())]


class Gauge(Counter):
    """A value that goes up and down."""

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text, kind="gauge")

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = float(value)


class Histogram(Metric):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, "histogram", help_text)
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, x)] += 1
        self.sum += x
        self.count += 1

    def render(self) -> list[str]:
        lines, total = self.header(), 0
        for le, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            lines.append(f'{self.name}_bucket{{le="{_num(le)}"}} {total}')
        return lines + [f"{self.name}_sum {_num(self.sum)}", f"{self.name}_count {self.count}"]


class ServerMetrics:
    """What ``obert serve`` reports: requests by path and status, errors by reason, inputs
    and batches run, batch sizes, queue depth, in-flight requests, request latency, and the
    time in the model and around it per batch."""

    def __init__(self) -> None:
        self.requests = Counter("obert_requests_total", "HTTP requests answered, by path and "
                                "status code.")
        self.errors = Counter("obert_errors_total", "Requests refused or failed, by reason "
                              "(invalid, too_long, too_many_inputs, payload_too_large, "
                              "queue_full, internal, disconnected).")
        self.inputs = Counter("obert_inputs_total", "Inputs (texts, pairs, questions) run by "
                              "the model.")
        self.batches = Counter("obert_batches_total", "Batches run by the model.")
        self.rows = Counter("obert_batch_rows_total", "Sequences run (QA windows, choices).")
        self.padded = Counter("obert_padded_tokens_total", "Tokens run, padding included.")
        self.queue = Gauge("obert_queue_depth", "Inputs waiting for a batch.")
        self.in_flight = Gauge("obert_requests_in_flight", "Predict requests accepted and not "
                               "yet answered.")
        self.latency = Histogram("obert_request_duration_seconds", "Time from a predict "
                                 "request's arrival to its answer.", LATENCY_BUCKETS)
        self.batch_size = Histogram("obert_batch_size", "Inputs per batch.", BATCH_BUCKETS)
        self.model_s = Histogram("obert_model_seconds", "Time per batch in the model's "
                                 "forward.", LATENCY_BUCKETS)
        self.batch_s = Histogram("obert_batch_seconds", "Time per batch in the worker: "
                                 "tokenize, forward, decode.", LATENCY_BUCKETS)

    def render(self) -> str:
        parts = [self.requests, self.errors, self.inputs, self.batches, self.rows, self.padded,
                 self.queue, self.in_flight, self.latency, self.batch_size, self.model_s,
                 self.batch_s]
        return "\n".join(line for m in parts for line in m.render()) + "\n"
