"""``Rows``: what ``query()`` returns on both sides."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Rows(list):  # type: ignore[type-arg]
    """A list of rows, each a ``dict`` from column name to value, in column order.

    ``rowcount`` is the number of rows the statement returned or touched (an ``UPDATE`` without
    ``RETURNING`` returns an empty ``Rows`` whose ``rowcount`` says how many rows it updated).
    """

    __slots__ = ("rowcount", "_wire")

    def __init__(self, rows: Any = (), rowcount: int | None = None) -> None:
        super().__init__(rows)
        self.rowcount = len(self) if rowcount is None else rowcount
        #: set by the server's SPI port: column -> (kind, values, PostgreSQL's text of them),
        #: so the codec can send a column PostgreSQL printed as that text while every row
        #: still holds exactly those values (checked by identity). Not part of the value.
        self._wire: dict[str, tuple[str, list[Any], list[Any]]] | None = None

    def __repr__(self) -> str:
        return f"Rows({list.__repr__(self)}, rowcount={self.rowcount})"
