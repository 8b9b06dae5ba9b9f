"""bench.compare's arithmetic: which variant runs first in a pair, and which pairs the medians use."""

from __future__ import annotations

from typing import Any

from bench import compare


def run(certificates_per_second: float, failed: int = 0, cpu: float = 20.0) -> dict[str, Any]:
    level = {"concurrency": 16, "certificates_per_second": certificates_per_second, "failed": failed,
             "issuance_ms": {"p50": 1000 / certificates_per_second, "p99": 2000 / certificates_per_second},
             "cpu_ms_per_certificate": {"signer": cpu, "pebble": 99.0}}
    return {"targets": [{"key": "b", "load": {"levels": [level]}}]}


def test_pairs_alternate_which_variant_runs_first() -> None:
    assert [compare.run_order(number) for number in range(1, 5)] == [(0, 1), (1, 0), (0, 1), (1, 0)]


def test_a_pair_with_failed_certificates_is_shown_but_left_out_of_the_medians() -> None:
    rounds = [[run(60), run(60)], [run(60), run(66)], [run(60), run(2, failed=32)]]
    [row] = compare.summary(["A", "B"], rounds)
    assert row["ratio_certificates_per_second"] == [1.0, 1.1, 0.033]
    assert row["median_ratio_certificates_per_second"] == 1.05
    assert row["left_out"] == [3]
    assert row["B"]["failed"] == 32 and row["B"]["certificates_per_second"] == 63.0
    # Pebble's CPU is not acme-ra's.
    assert row["A"]["cpu_ms"] == 20.0
    assert "pairs left out of the medians: 3" in compare.table(["A", "B"], [row])


def test_only_pairs_where_every_certificate_was_issued_count_as_complete() -> None:
    assert compare.complete_pairs([[run(60), run(60)], [run(60), run(2, failed=32)], [run(60), {}]]) == 1
