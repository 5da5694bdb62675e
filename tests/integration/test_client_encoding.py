"""A connection whose client_encoding cannot represent some text: a clear wormhole error that
says what to do, not the driver's raw UnicodeEncodeError, and the connection stays usable."""

from __future__ import annotations

import pytest

import wormhole
from wormhole import errors, query, remote


@remote
def euro(x):
    return "€" + x  # the source itself holds a character LATIN1 has not


@remote
def plain(x):
    return x + "!"


def _latin1(conn, driver_name):
    if driver_name == "psycopg":
        conn.execute("SET client_encoding TO 'LATIN1'")
        conn.commit()
    else:
        conn.set_client_encoding("LATIN1")


@pytest.mark.parametrize("case", ["source", "statement", "parameter"])
def test_text_the_client_encoding_cannot_represent_is_a_clear_error(conn, driver_name, case):
    _latin1(conn, driver_name)
    with wormhole.connection(conn):
        with pytest.raises(errors.ArgumentError) as info:
            if case == "source":
                euro("a")
            elif case == "statement":
                query("SELECT '€' AS t")
            else:
                query("SELECT $1::text AS t", "€")
        message = str(info.value)
        assert "client_encoding (latin" in message.lower() and "U+20AC" in message
        assert "UTF8" in message
        assert isinstance(info.value, TypeError)  # ArgumentError: also a TypeError
        # nothing was sent: the connection and its transaction still work
        assert query("SELECT $1::text AS t", "ä")[0]["t"] == "ä"
        assert plain("ä") == "ä!"
