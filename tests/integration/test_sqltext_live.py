"""``to_pyformat`` against real psycopg2: ``%`` and ``$n`` inside literals survive unchanged.

Uses the ``dsn`` fixture (a superuser libpq DSN of a fresh database). The same ``$n`` SQL runs
through psycopg 3 (``RawCursor``, server-side ``$n``) and through psycopg2 after translation
(the driver always passes a dict, possibly empty); both must return the same row.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg2
import pytest

from wormhole.runtime.sqltext import to_pyformat

CASES: list[tuple[str, list[Any]]] = [
    ("SELECT '%' AS a, '%%' AS b, '%s' AS c, '%(p1)s' AS d", []),
    ("SELECT 10 % 3 AS a", []),
    ("SELECT 10 % $1 AS a", [4]),
    ("SELECT $1::int + $2::int AS a, '$1 %' AS b", [1, 2]),
    ("SELECT $2::text AS a, $1::text AS b", ["x", "y"]),
    ("SELECT $1::text AS a, $1::text AS b", ["same"]),
    ("SELECT \"a$1%\".x FROM (SELECT 1 AS x) AS \"a$1%\"", []),
    ("SELECT E'\\'$1 %' AS a, $1::int AS b", [7]),
    ("SELECT U&'\\0041$1%' AS a", []),
    ("SELECT $$ $1 % '$2' $$ AS a, $tag$ $$ $1 %(p1)s $tag$ AS b, $1::int AS c", [3]),
    ("SELECT 1 AS a -- $1 % comment\n", []),
    ("SELECT /* $1 /* nested % */ $2 */ $1::text AS a", ["v"]),
    ("SELECT $1::text LIKE 'a%' AS a", ["abc"]),
    ("SELECT 'it''s $1 %' AS a, $1::int AS b", [1]),
    ("SELECT format('%s-%s', $1::text, 'x') AS a", ["q"]),
    ("SELECT $10::int AS a, " + ", ".join(f"${i}::int AS b{i}" for i in range(1, 10)),
     [None, 2, None, None, None, None, None, None, 9, 10]),
]


@pytest.mark.parametrize(("sql", "params"), CASES)
def test_psycopg2_translation_matches_psycopg3(dsn: str, sql: str, params: list[Any]) -> None:
    with psycopg.connect(dsn, autocommit=True) as c3:
        cur3 = psycopg.RawCursor(c3)
        cur3.execute(sql, [None if p is None else str(p) for p in params] or None)
        expected = cur3.fetchall()
    c2 = psycopg2.connect(dsn)
    try:
        cur2 = c2.cursor()
        cur2.execute(to_pyformat(sql), {f"p{i}": None if p is None else str(p)
                                        for i, p in enumerate(params, 1)})
        got = cur2.fetchall()
    finally:
        c2.close()
    assert [tuple(r) for r in got] == [tuple(r) for r in expected]
