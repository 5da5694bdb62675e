"""``Rows``: what ``query()`` returns on both sides."""

from __future__ import annotations

from typing import Any


class Rows(list):  # type: ignore[type-arg]
    """A list of rows, each a ``dict`` from column name to value, in column order.

    ``rowcount`` is the number of rows the statement returned or touched (an ``UPDATE`` without
    ``RETURNING`` returns an empty ``Rows`` whose ``rowcount`` says how many rows it updated).
    """

    __slots__ = ("rowcount",)

    def __init__(self, rows: Any = (), rowcount: int | None = None) -> None:
        super().__init__(rows)
        self.rowcount = len(self) if rowcount is None else rowcount

    def __repr__(self) -> str:
        return f"Rows({list.__repr__(self)}, rowcount={self.rowcount})"
