"""The benchmark still runs and every implementation it compares returns the right answer.

Correctness only: tiny data, one short cell per implementation, no timing judged (timings
stay out of CI; run ``python -m bench`` for numbers).
"""

from __future__ import annotations

import pytest

bench_run = pytest.importorskip("bench.run")
pytest.importorskip("asyncpg")
pytest.importorskip("psycopg2")


def test_bench_smoke(server):
    if server.cluster is None:
        pytest.skip("the smoke run needs the session's own cluster (TCP on 127.0.0.1)")
    res, text = bench_run.smoke(server.dsn())
    assert res.failed == {}
    for impl in bench_run.IMPLS:
        cell = res.cell("unix", 1, "get_user_summary", impl.key)
        assert cell is not None and cell.calls > 0, impl.label
    assert "## Targets (issue 5)" in text
    # the report counts what it met and points to why the rest is missed
    assert "targets met in this run" in text and "#why-some-targets-are-missed" in text
