import threading

import pytest

from fastret.serve import metrics


def test_counter_renders_per_label_and_escapes():
    counter = metrics.Counter("app_requests_total", "requests", ("endpoint", "status"))
    counter.inc(labels=("/embed", "200"))
    counter.inc(2, labels=("/embed", "200"))
    counter.inc(labels=('/a"b\\c', "404"))
    assert counter.value(("/embed", "200")) == 3 and counter.value(("/x", "500")) == 0
    assert counter.render() == [
        "# HELP app_requests_total requests",
        "# TYPE app_requests_total counter",
        'app_requests_total{endpoint="/a\\"b\\\\c",status="404"} 1',
        'app_requests_total{endpoint="/embed",status="200"} 3',
    ]


def test_unlabelled_instruments_show_zeros_before_their_first_observation():
    assert metrics.Counter("c_total", "c").render()[-1] == "c_total 0"
    assert metrics.Histogram("h", "h", (1, 2)).render()[2:] == [
        'h_bucket{le="1"} 0', 'h_bucket{le="2"} 0', 'h_bucket{le="+Inf"} 0', "h_sum 0", "h_count 0"]


def test_gauge_is_set():
    gauge = metrics.Gauge("g", "a gauge")
    gauge.set(2.5)
    gauge.set(1.25)
    assert gauge.render() == ["# HELP g a gauge", "# TYPE g gauge", "g 1.25"]


def test_histogram_buckets_are_cumulative_with_sum_and_count():
    histogram = metrics.Histogram("h_seconds", "latency", (0.1, 1, 10), ("endpoint",))
    for value in (0.05, 0.1, 0.5, 5, 50):
        histogram.observe(value, labels=("/e",))
    assert histogram.count(("/e",)) == 5 and histogram.count(("/other",)) == 0
    assert histogram.render()[2:] == [
        'h_seconds_bucket{endpoint="/e",le="0.1"} 2',  # le is inclusive: 0.1 counts here
        'h_seconds_bucket{endpoint="/e",le="1"} 3',
        'h_seconds_bucket{endpoint="/e",le="10"} 4',
        'h_seconds_bucket{endpoint="/e",le="+Inf"} 5',
        'h_seconds_sum{endpoint="/e"} 55.65',
        'h_seconds_count{endpoint="/e"} 5',
    ]


def test_render_joins_instruments_in_order():
    a, b = metrics.Counter("a_total", "a"), metrics.Gauge("b", "b")
    text = metrics.render([a, b])
    assert text.endswith("\n") and text.index("a_total 0") < text.index("b 0")


def test_concurrent_increments_are_not_lost():
    counter = metrics.Counter("n_total", "n")

    def work():
        for _ in range(10_000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value() == 40_000


def test_bad_use():
    counter = metrics.Counter("x_total", "x", ("a",))
    with pytest.raises(ValueError, match=r"x_total takes labels \('a',\), got \(\)"):
        counter.inc()
    with pytest.raises(ValueError, match="a counter only grows; got -1"):
        counter.inc(-1, labels=("v",))
    with pytest.raises(ValueError, match="buckets must be increasing and distinct"):
        metrics.Histogram("h", "h", (1, 1))
    with pytest.raises(ValueError, match="buckets must be increasing and distinct"):
        metrics.Histogram("h", "h", ())
