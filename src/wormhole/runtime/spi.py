"""``SpiPort``: ``query()`` inside a backend, over a plpy-like object.

The same class serves user code in-process and the worker's ``query`` messages, so both modes
run SQL through one path:

* the statement is checked (one statement; no transaction control, role changes,
  ``set_config``...: ``sqltext.check_statement``);
* parameter types are inferred by PostgreSQL itself, once per backend and SQL text, by
  ``PREPARE``-ing the statement and reading ``pg_prepared_statements`` (``plpy.prepare`` needs
  explicit types: ``["unknown"]`` fails and ``["text"]`` breaks ``int_col = $1``). The plan is
  then prepared with those types and reused;
* rows are converted by column type OID so they equal what psycopg returns client-side.

``plpy`` is passed in: the real module inside PostgreSQL, or ``wormhole.testing.PlpyShim`` (a
small implementation of the same interface over a real psycopg connection) in plain CPython.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a new backend ~2 ms to import; annotations only
    from collections.abc import Sequence
    from typing import Any

from . import pgtypes, sqltext
from .errors import DatabaseError, Interrupted
from .codec import ROWSET_MIN
from .rows import Rows

#: SQLSTATEs that mean "stop now": user code must not be able to catch and continue.
INTERRUPT_SQLSTATES = frozenset(
    {
        "57014",  # query_canceled: cancel, statement_timeout
        "57P01",  # admin_shutdown: terminate
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
    }
)

_INFER_NAME = "_wormhole_infer"

_to_pg_text = pgtypes.to_pg_text
_new_list = list.__new__


class _Plan:
    __slots__ = ("plan", "typnames", "nparams", "params", "text_only", "converters", "has_rows",
                 "convert")

    def __init__(self, plan: Any, typnames: list[str], nparams: int) -> None:
        self.plan = plan
        self.typnames = typnames
        self.nparams = nparams
        #: per parameter: value -> what plpy.execute takes (chosen once per plan)
        self.params = [pgtypes.plpy_param_converter(t) for t in typnames]
        #: every parameter is sent as ``to_pg_text`` (no array, boolean or bytea parameter)
        self.text_only = all(f is _to_pg_text for f in self.params)
        self.converters: Any = None
        self.has_rows: bool | None = None
        #: some result column needs converting (known after the first execution)
        self.convert = False


class SpiPort:
    """A ``QueryPort`` that runs statements with SPI as the calling role."""

    def __init__(self, plpy: Any, plans: dict[str, Any] | None = None, max_plans: int = 1024):
        self.plpy = plpy
        # plans are per backend (prepared statements live there); the host keeps this dict
        # in its per-backend state so every call in the session reuses them.
        self.plans: dict[str, Any] = plans if plans is not None else {}
        self.max_plans = max_plans

    # -- QueryPort ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[object]) -> Rows:
        entry = self.plans.get(sql) if type(sql) is str else None
        if entry is None:
            if type(sql) is not str:
                raise DatabaseError("query() needs the SQL text as a str", sqlstate="WH005")
            entry = self._prepare(sql)
        if len(params) != entry.nparams:
            raise DatabaseError(
                f"the statement has {entry.nparams} parameter(s) but {len(params)} "
                f"argument(s) were given",
                sqlstate="08P01",
            )
        plpy = self.plpy
        try:
            if params:
                try:
                    if entry.text_only:
                        # to_pg_text, with its commonest case (an int: str) inline
                        if len(params) == 1:
                            v = params[0]
                            args = [str(v) if type(v) is int else _to_pg_text(v)]
                        else:
                            args = [str(v) if type(v) is int else _to_pg_text(v) for v in params]
                    else:
                        args = [f(v) for f, v in zip(entry.params, params)]
                except (TypeError, ValueError) as exc:
                    raise DatabaseError(f"cannot send parameter: {exc}",
                                        sqlstate="22023") from None
                result = plpy.execute(entry.plan, args)
            else:
                result = plpy.execute(entry.plan)
        except plpy.SPIError as exc:
            raise self._translate(exc) from None
        has_rows = entry.has_rows
        if has_rows is not None and not entry.convert:  # the warm path of most statements
            # Rows(result or (), result.nrows()) without running Rows.__init__'s Python frame
            rows = _new_list(Rows)
            if has_rows:
                rows.extend(result)
            rows.rowcount = result.nrows()
            rows._wire = None
            return rows
        return self._rows(entry, result)

    # -- internals ---------------------------------------------------------------------------
    def _translate(self, exc: Any) -> BaseException:
        sqlstate = getattr(exc, "sqlstate", None)
        detail = getattr(exc, "detail", None)
        hint = getattr(exc, "hint", None)
        spidata = getattr(exc, "spidata", None)
        if sqlstate is None and isinstance(spidata, tuple) and spidata:
            # PL/Python sets .sqlstate only for codes it knows; spidata holds the packed code
            # (custom codes such as wormhole's WHxxx, raised by a nested function)
            sqlstate = _unpack_sqlstate(spidata[0])
            detail = detail if detail is not None else _at(spidata, 1)
            hint = hint if hint is not None else _at(spidata, 2)
        if sqlstate in INTERRUPT_SQLSTATES:
            return Interrupted(exc, str(exc))
        message = _message(exc)
        if message.startswith("plpy.Error: "):
            message = message[len("plpy.Error: "):]
        return DatabaseError(message, sqlstate, detail, hint)

    def _prepare(self, sql: str) -> _Plan:
        plpy = self.plpy
        sqltext.check_statement(sql)
        numbers = sqltext.param_numbers(sql)
        nparams = max(numbers) if numbers else 0
        typnames: list[str] = []
        basenames: list[str] = []
        try:
            if nparams:
                typnames, basenames = self._infer(sql, nparams)
                plan = plpy.prepare(sql, typnames)
            else:
                plan = plpy.prepare(sql)
        except plpy.SPIError as exc:
            raise self._translate(exc) from None
        # values are converted by the base type of a domain (plpy turns 'false' into True for
        # a domain over boolean); the plan keeps the domain, so its constraints still apply
        entry = _Plan(plan, basenames, nparams)
        if len(self.plans) >= self.max_plans:
            self.plans.clear()
        self.plans[sql] = entry
        return entry

    def _infer(self, sql: str, nparams: int) -> tuple[list[str], list[str]]:
        """Ask PostgreSQL which types it infers for ``$1..$n`` (as the client's server would).

        Returns the inferred type names (for the plan) and, for domains, their base types (for
        converting the values).
        """
        plpy = self.plpy
        plpy.execute(f"PREPARE {_INFER_NAME} AS {sql}")
        try:
            rows = plpy.execute(
                "SELECT p.typ::pg_catalog.regtype::pg_catalog.text AS t, pg_catalog.format_type("
                "CASE WHEN t.typtype OPERATOR(pg_catalog.=) 'd' THEN t.typbasetype ELSE t.oid END,"
                " NULL) AS b "
                "FROM pg_catalog.pg_prepared_statements s, "
                "pg_catalog.unnest(s.parameter_types) WITH ORDINALITY AS p(typ, ord), "
                "pg_catalog.pg_type t "
                f"WHERE s.name OPERATOR(pg_catalog.=) '{_INFER_NAME}'"
                " AND t.oid OPERATOR(pg_catalog.=) p.typ ORDER BY p.ord"
            )
        finally:
            plpy.execute(f"DEALLOCATE {_INFER_NAME}")
        types = [r["t"] for r in rows]
        bases = [r["b"] for r in rows]
        if len(types) < nparams:
            types += ["text"] * (nparams - len(types))
            bases += ["text"] * (nparams - len(bases))
        return types, bases

    def _rows(self, entry: _Plan, result: Any) -> Rows:
        nrows = result.nrows()
        if entry.has_rows is None:
            try:
                names = result.colnames()
                types = result.coltypes()
            except Exception:  # noqa: BLE001 - plpy raises plpy.Error: no result set
                entry.has_rows = False
            else:
                entry.has_rows = True
                entry.converters = (list(names), pgtypes.converters_for(list(types)))
                entry.convert = any(c is not None for c in entry.converters[1])
        if not entry.has_rows:
            return Rows((), nrows)
        names, converters = entry.converters
        rows = list(result)  # PL/Python's row dicts are new per execution: ours to convert
        out = Rows(rows, nrows)
        if any(c is not None for c in converters):
            keep: dict[str, tuple[str, list[Any], list[Any]]] | None = (
                {} if nrows >= ROWSET_MIN else None)
            pgtypes.apply_converters_in_place(names, converters, out, keep)
            if keep:
                out._wire = keep
        return out


def _unpack_sqlstate(code: object) -> str | None:
    """PostgreSQL's MAKE_SQLSTATE packing (6 bits per character) back to the 5 characters."""
    if type(code) is not int or code <= 0:
        return None
    return "".join(chr(((code >> (6 * i)) & 0x3F) + ord("0")) for i in range(5))


def _at(values: tuple[Any, ...], index: int) -> str | None:
    value = values[index] if len(values) > index else None
    return value if isinstance(value, str) else None


def _message(exc: Any) -> str:
    # plpy.SPIError's str() is the primary message; keep it as PostgreSQL wrote it.
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], str):
        return args[0]
    return str(exc)
