"""Counters and histograms in the Prometheus text format, for the HTTP server's `GET /metrics`.

A few instruments with labels, thread-safe (the batching worker and the event loop both record),
written out in the exposition format Prometheus scrapes (version 0.0.4). Small enough that the
server needs no client library.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Instrument:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        self.name, self.help_text, self.label_names = name, help_text, tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> tuple[str, ...]:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> Iterable[str]:
        raise NotImplementedError


class Counter(_Instrument):
    """A total that only grows, one per label combination."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, labels: Sequence[str] = ()) -> None:
        """Add `amount` (>= 0) to the total of `labels` (one value per label name)."""
        if amount < 0:
            raise ValueError(f"a counter only grows; got {amount}")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, labels: Sequence[str] = ()) -> float:
        """The current total of `labels` (0 if never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return [f"{self.name}{_labels(self.label_names, key)} {_number(v)}" for key, v in items]


class Gauge(Counter):
    """A value that is set, one per label combination."""

    kind = "gauge"

    def set(self, value: float, labels: Sequence[str] = ()) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Instrument):
    """Observations counted into cumulative buckets (`le` upper bounds), with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()):
        super().__init__(name, help_text, labels)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must be increasing and distinct, got {list(buckets)}")
        self.buckets = [float(b) for b in buckets]
        self._series: dict[tuple[str, ...], list] = {}  # key -> [per-bucket counts (+Inf last), sum]

    def observe(self, value: float, labels: Sequence[str] = ()) -> None:
        """Count one observation of `value` for `labels`."""
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0])
            series[0][bisect.bisect_left(self.buckets, value)] += 1
            series[1] += value

    def count(self, labels: Sequence[str] = ()) -> int:
        """How many observations `labels` has."""
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def _samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((key, (list(counts), total)) for key, (counts, total) in self._series.items())
        if not items and not self.label_names:
            items = [((), ([0] * (len(self.buckets) + 1), 0.0))]
        lines = []
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip([*self.buckets, math.inf], counts):
                running += n
                le = 'le="' + _number(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


def render(instruments: Iterable[_Instrument]) -> str:
    """The exposition text of `instruments`, in the given order."""
    return "\n".join(line for instrument in instruments for line in instrument.render()) + "\n"
