"""Pieces both sync drivers share: parameter checks and error translation."""

from __future__ import annotations

from collections.abc import Sequence

from .. import errors
from ..runtime import pgtypes, sqltext


def text_params(sql: str, params: Sequence[object]) -> list[str | None]:
    """Check the parameter count and render every parameter as PostgreSQL input text.

    The count check mirrors the server (same message, same SQLSTATE), so a wrong call fails
    the same way on both sides, and before any round trip.
    """
    numbers = sqltext.param_numbers(sql)
    expected = max(numbers) if numbers else 0
    if len(params) != expected:
        raise errors.lookup("08P01")(
            f"the statement has {expected} parameter(s) but {len(params)} argument(s) were given",
            "08P01",
        )
    out: list[str | None] = []
    for i, value in enumerate(params, 1):
        try:
            out.append(pgtypes.to_pg_text(value))
        except (TypeError, ValueError) as exc:
            raise errors.ArgumentError(f"query() parameter ${i}: {exc}") from None
    return out


def unencodable(exc: UnicodeEncodeError) -> errors.ArgumentError:
    """A clear error for text the connection's ``client_encoding`` cannot represent (a
    function's source, a ``query()`` statement or parameter): the driver's own
    ``UnicodeEncodeError`` says neither where nor what to do."""
    bad = exc.object[exc.start:exc.end] if isinstance(exc.object, str) else ""
    what = f" {bad[0]!r} (U+{ord(bad[0]):04X})" if bad else " a character"
    return errors.ArgumentError(
        f"the connection's client_encoding ({exc.encoding}) cannot represent{what}, found in "
        "a statement, a parameter or a remote function's source; connect with client_encoding "
        "UTF8 (e.g. options='-c client_encoding=UTF8' in the connection string)"
    )


def translate(exc: BaseException, sqlstate: str | None, primary: str | None,
              detail: str | None, hint: str | None) -> errors.DatabaseError:
    """A wormhole DatabaseError for a driver error, keeping the SQLSTATE and diagnostics."""
    cls = errors.lookup(sqlstate)
    if sqlstate is None:
        cls = errors.ConnectionLost if _looks_lost(exc) else errors.OperationalError
    err = cls(primary or str(exc).strip(), sqlstate, detail, hint)
    err.__cause__ = exc
    return err


def _looks_lost(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name in ("OperationalError", "InterfaceError")
