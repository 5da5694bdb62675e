"""The SQL lexer: $n -> %(pn)s translation, statement splitting, the forbidden-statement guard."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wormhole.runtime.errors import DatabaseError
from wormhole.runtime.sqltext import (
    ForbiddenStatement,
    check_statement,
    param_numbers,
    split_statements,
    to_pyformat,
)

# (sql, to_pyformat(sql), param_numbers(sql))
TRANSLATIONS: list[tuple[str, str, set[int]]] = [
    ("SELECT 1", "SELECT 1", set()),
    ("SELECT $1", "SELECT %(p1)s", {1}),
    ("SELECT $1, $2, $1", "SELECT %(p1)s, %(p2)s, %(p1)s", {1, 2}),
    ("SELECT $10+$2", "SELECT %(p10)s+%(p2)s", {2, 10}),
    ("SELECT $1::int", "SELECT %(p1)s::int", {1}),
    ("SELECT ($1)", "SELECT (%(p1)s)", {1}),
    ("SELECT 10 % 3", "SELECT 10 %% 3", set()),
    ("SELECT '%'", "SELECT '%%'", set()),
    ("SELECT '%s %(p1)s'", "SELECT '%%s %%(p1)s'", set()),
    ("SELECT '$1'", "SELECT '$1'", set()),
    ("SELECT 'it''s $1' || $1", "SELECT 'it''s $1' || %(p1)s", {1}),
    ("SELECT 'a\\' || $1", "SELECT 'a\\' || %(p1)s", {1}),  # standard strings: \ is plain
    ("SELECT E'a\\' $1' || $1", "SELECT E'a\\' $1' || %(p1)s", {1}),
    ("SELECT e'\\\\' || $1", "SELECT e'\\\\' || %(p1)s", {1}),
    ("SELECT E'a''$1' || $2", "SELECT E'a''$1' || %(p2)s", {2}),
    ("SELECT U&'\\0041 $1' || $2", "SELECT U&'\\0041 $1' || %(p2)s", {2}),
    ("SELECT u&'$1'", "SELECT u&'$1'", set()),
    ("SELECT N'$1', B'01', X'1f' || $3", "SELECT N'$1', B'01', X'1f' || %(p3)s", {3}),
    ('SELECT "$1", "a""$2%"', 'SELECT "$1", "a""$2%%"', set()),
    ('SELECT U&"$1"', 'SELECT U&"$1"', set()),
    ("SELECT a$1, b$1$ FROM t$2", "SELECT a$1, b$1$ FROM t$2", set()),
    ("SELECT _x$1 + $1", "SELECT _x$1 + %(p1)s", {1}),
    ("SELECT $$ $1 % $$", "SELECT $$ $1 %% $$", set()),
    ("SELECT $a$ $1 $$ $b$ $a$, $1", "SELECT $a$ $1 $$ $b$ $a$, %(p1)s", {1}),
    ("SELECT $_x1$ $1 $_x1$ || $2", "SELECT $_x1$ $1 $_x1$ || %(p2)s", {2}),
    ("SELECT $é$ $1 $é$ || $2", "SELECT $é$ $1 $é$ || %(p2)s", {2}),
    ("SELECT $A$ $1 $a$ $2", "SELECT $A$ $1 $a$ $2", set()),  # tags are case-sensitive
    ("SELECT 1 -- $1 %\n, $2", "SELECT 1 -- $1 %%\n, %(p2)s", {2}),
    ("SELECT 1 -- $1", "SELECT 1 -- $1", set()),
    ("SELECT /* $1 % */ $2", "SELECT /* $1 %% */ %(p2)s", {2}),
    ("SELECT /* /* $1 */ $2 */ $3", "SELECT /* /* $1 */ $2 */ %(p3)s", {3}),
    ("SELECT /* unterminated $1", "SELECT /* unterminated $1", set()),
    ("SELECT 'unterminated $1", "SELECT 'unterminated $1", set()),
    ("SELECT $$unterminated $1", "SELECT $$unterminated $1", set()),
    ('SELECT "unterminated $1', 'SELECT "unterminated $1', set()),
    ("SELECT 1e5, .5, 1.5e-3, $1", "SELECT 1e5, .5, 1.5e-3, %(p1)s", {1}),
    ("SELECT $", "SELECT $", set()),
    ("SELECT $ 1", "SELECT $ 1", set()),
    ("SELECT x->>'%' FROM t WHERE y LIKE $1 || '%'",
     "SELECT x->>'%%' FROM t WHERE y LIKE %(p1)s || '%%'", {1}),
    ("SELECT $1-$2*$3/$4", "SELECT %(p1)s-%(p2)s*%(p3)s/%(p4)s", {1, 2, 3, 4}),
    ("SELECT $1--$2\n", "SELECT %(p1)s--$2\n", {1}),
    ("SELECT $1/*$2*/", "SELECT %(p1)s/*$2*/", {1}),
    ("SELECT éa$1, $1", "SELECT éa$1, %(p1)s", {1}),
]


@pytest.mark.parametrize(("sql", "expected", "numbers"), TRANSLATIONS)
def test_to_pyformat(sql: str, expected: str, numbers: set[int]) -> None:
    assert to_pyformat(sql) == expected
    assert param_numbers(sql) == numbers


@pytest.mark.parametrize(("sql", "expected", "numbers"), TRANSLATIONS)
def test_pyformat_round_trip_through_percent_formatting(sql: str, expected: str,
                                                        numbers: set[int]) -> None:
    """What psycopg2 does with the dict: %-format. Literal text comes back unchanged."""
    params = {f"p{n}": f"${n}" for n in numbers}
    assert to_pyformat(sql) % params == sql


# ---------------------------------------------------------------------------------------------
# property: to_pyformat never changes text inside literals

literal_body = st.text(alphabet=st.sampled_from(list("ab $%1'\"\\\n*/-{}é")), max_size=12)


@st.composite
def fragments(draw: Any) -> tuple[str, str]:
    """(sql fragment, expected text after %-formatting with {pN: '<N>'})."""
    kind = draw(st.sampled_from(["code", "param", "str", "estr", "ident", "dollar", "line",
                                 "block", "percent"]))
    if kind == "code":
        w = draw(st.sampled_from(["SELECT", " ", ",", "a$1", "x", "(", ")", "+", "1", "::int"]))
        return w, w
    if kind == "param":
        n = draw(st.integers(1, 12))
        return f" ${n} ", f" <{n}> "
    if kind == "percent":
        return " % ", " % "
    body = draw(literal_body)
    if kind == "str":
        s = "'" + body.replace("'", "''") + "'"
    elif kind == "estr":
        s = "E'" + body.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif kind == "ident":
        s = '"' + body.replace('"', '""') + '"'
    elif kind == "dollar":
        tag = draw(st.sampled_from(["", "t", "x_1"]))
        assume_body = body.replace("$", "")  # keep the closing delimiter unambiguous
        s = f"${tag}${assume_body}${tag}$"
    elif kind == "line":
        s = "--" + body.replace("\n", " ") + "\n"
    else:
        s = "/*" + body.replace("*/", "").replace("/*", "").rstrip("/*") + "*/"
    # a leading space: "SELECT" + "E'..'" would be the identifier SELECTE and a plain string
    return " " + s, " " + s


@given(st.lists(fragments(), max_size=12))
def test_to_pyformat_only_touches_code(parts: list[tuple[str, str]]) -> None:
    sql = "".join(p for p, _ in parts)
    expected = "".join(e for _, e in parts)
    nums = {int(m) for m in re.findall(r"<(\d+)>", expected)}
    out = to_pyformat(sql) % {f"p{n}": f"<{n}>" for n in range(1, 13)}
    assert out == expected
    assert param_numbers(sql) == nums


@given(st.text(max_size=60))
def test_lexer_total_on_any_text(sql: str) -> None:
    """Any text: translation %-formats back to the original, split and check never crash."""
    out = to_pyformat(sql)
    params = {f"p{n}": f"${n}" for n in param_numbers(sql)}
    assert out % params == sql
    split_statements(sql)
    try:
        check_statement(sql)
    except ForbiddenStatement:
        pass


# ---------------------------------------------------------------------------------------------
# statements


@pytest.mark.parametrize(
    ("sql", "parts"),
    [
        ("SELECT 1", ["SELECT 1"]),
        ("SELECT 1;", ["SELECT 1"]),
        ("  SELECT 1 ;; ;  -- trailing\n/* c */", ["SELECT 1"]),
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';'; SELECT \";\"", ["SELECT ';'", 'SELECT ";"']),
        ("SELECT $$;$$; SELECT 2 -- ;\n", ["SELECT $$;$$", "SELECT 2"]),
        ("SELECT /* ; */ 1", ["SELECT /* ; */ 1"]),
        ("", []), (" -- only a comment", []), (";", []),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
         "SELECT CASE WHEN true THEN 2 END; END; SELECT 3",
         ["CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
          "SELECT CASE WHEN true THEN 2 END; END", "SELECT 3"]),
        ("CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END",
         ["CREATE OR REPLACE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END"]),
        ("CREATE TABLE t (a int); SELECT 1", ["CREATE TABLE t (a int)", "SELECT 1"]),
    ],
)
def test_split_statements(sql: str, parts: list[str]) -> None:
    assert split_statements(sql) == parts


ALLOWED = [
    "SELECT 1", "select 1;", "SELECT 1; -- done", "  /* hi */ SELECT 1 ; /* bye */",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u",
    "INSERT INTO t VALUES ('BEGIN; COMMIT')", "UPDATE t SET begin = 1", "DELETE FROM t",
    "SELECT 'set_config'", "SELECT $$ set_config $$", "SELECT 1 -- set_config(\n",
    "SELECT set_configuration FROM t", "SELECT * FROM my_set_config",
    "NOTIFY chan, 'x'", "SELECT pg_notify('c', 'x')",
    "SET search_path = a, b", "SET LOCAL search_path TO a", "SET SESSION work_mem = '64MB'",
    "SET TIME ZONE 'UTC'", "SET TimeZone = 'UTC'", "SET CONSTRAINTS ALL DEFERRED",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "RESET search_path",
    "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p", "START", "CALL proc()",
    "CREATE TABLE begin_log (id int)", "CREATE FUNCTION f() RETURNS int LANGUAGE sql "
    "BEGIN ATOMIC SELECT 1; END", "EXPLAIN SELECT 1", "SELECT * FROM pg_settings",
    "VALUES (1)", "TABLE t", "(SELECT 1)", "COMMENT ON TABLE t IS 'COMMIT'",
    "SELECT 1 AS \"COMMIT\"", "ANALYZE t", "DECLARE c CURSOR FOR SELECT 1", "FETCH c",
    "", "-- nothing",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    check_statement(sql)


FORBIDDEN = [
    ("SELECT 1; SELECT 2", "more than one statement"),
    ("SELECT 1; DROP TABLE t", "more than one statement"),
    ("BEGIN", "BEGIN"), ("begin;", "BEGIN"), ("BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE", "BEGIN"),
    ("/* x */ -- y\n  Commit", "COMMIT"), ("COMMIT AND CHAIN", "COMMIT"), ("END", "END"),
    ("end transaction", "END"), ("START TRANSACTION", "START TRANSACTION"),
    ("ROLLBACK", "ROLLBACK"), ("ROLLBACK TO SAVEPOINT s", "ROLLBACK"), ("ABORT", "ABORT"),
    ("SAVEPOINT s", "SAVEPOINT"), ("RELEASE SAVEPOINT s", "RELEASE"), ("release s", "RELEASE"),
    ("PREPARE TRANSACTION 'x'", "PREPARE TRANSACTION"), ("COMMIT PREPARED 'x'", "COMMIT"),
    ("ROLLBACK PREPARED 'x'", "ROLLBACK"),
    ("SET ROLE postgres", "role"), ("set role = postgres", "role"),
    ("SET SESSION ROLE postgres", "role"), ("SET LOCAL ROLE postgres", "role"),
    ('SET "role" TO postgres', "role"), ("RESET ROLE", "role"),
    ("SET SESSION AUTHORIZATION postgres", "SESSION AUTHORIZATION"),
    ("SET LOCAL SESSION AUTHORIZATION DEFAULT", "SESSION AUTHORIZATION"),
    ("SET SESSION SESSION AUTHORIZATION x", "SESSION AUTHORIZATION"),
    ("set session_authorization = x", "session_authorization"),
    ("RESET SESSION AUTHORIZATION", "SESSION AUTHORIZATION"),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SESSION CHARACTERISTICS"),
    ("RESET ALL", "RESET ALL"), ("DISCARD ALL", "DISCARD"), ("discard plans", "DISCARD"),
    ("SELECT set_config('statement_timeout', '0', false)", "set_config"),
    ("SELECT pg_catalog.set_config('role', 'x', true)", "set_config"),
    ("SELECT PG_CATALOG.SET_CONFIG('a', 'b', true)", "set_config"),
    ('SELECT "pg_catalog"."set_config"(\'a\', \'b\', true)', "set_config"),
    ('SELECT U&"set\\005Fconfig"(\'a\', \'b\', true)', "set_config"),
    ("SELECT * FROM set_config('a', 'b', true)", "set_config"),
    ("WITH x AS (SELECT set_config('a','b',true)) SELECT 1", "set_config"),
    ("UPDATE pg_settings SET setting = '0' WHERE name = 'statement_timeout'", "pg_settings"),
    ("update pg_catalog.pg_settings set setting = '0'", "pg_settings"),
    ("COPY t FROM STDIN", "COPY"), ("copy t to '/tmp/x'", "COPY"),
    ("COPY (SELECT 1) TO PROGRAM 'id'", "COPY"), ("LOAD 'plugin'", "LOAD"),
    ("DO $$ BEGIN PERFORM 1; END $$", "DO"), ("LISTEN chan", "LISTEN"),
    ("UNLISTEN *", "UNLISTEN"),
    ("SET statement_timeout = 0", "statement_timeout"),
    ("SET LOCAL statement_timeout TO DEFAULT", "statement_timeout"),
    ("SET SESSION statement_timeout = '1h'", "statement_timeout"),
    ('SET "statement_timeout" = 0', "statement_timeout"),
    ("RESET statement_timeout", "statement_timeout"), ("SET lock_timeout = 0", "lock_timeout"),
    ("RESET lock_timeout", "lock_timeout"),
    ("SET idle_in_transaction_session_timeout = 0", "idle_in_transaction_session_timeout"),
    ("SET transaction_timeout = 0", "transaction_timeout"),
    ("SET DateStyle = 'German'", "datestyle"), ("SET intervalstyle = iso_8601", "intervalstyle"),
    ("SET extra_float_digits = 0", "extra_float_digits"),
]


@pytest.mark.parametrize(("sql", "what"), FORBIDDEN)
def test_forbidden(sql: str, what: str) -> None:
    with pytest.raises(ForbiddenStatement) as e:
        check_statement(sql)
    assert what.lower() in str(e.value).lower()
    assert e.value.sqlstate == "WH003"
    assert isinstance(e.value, DatabaseError)
    assert "refuses" in str(e.value) and ":" in str(e.value)  # says what and why


def test_check_is_cheap() -> None:
    import time

    sql = ("WITH a AS (SELECT id, name, 'x % y' AS s FROM t WHERE id = $1) "
           "SELECT * FROM a JOIN b USING (id) WHERE b.v > $2 ORDER BY 1 LIMIT 10")
    t = time.perf_counter()
    for _ in range(1000):
        check_statement(sql)
    per_call = (time.perf_counter() - t) / 1000
    assert per_call < 0.002  # typically ~30 us
