"""P1: unvetted code runs in the confined worker (or not at all); vetted code in-process."""

from __future__ import annotations

import os

import psycopg
import pytest

import wormhole
from wormhole import errors, remote


def children(pid):
    """Command lines of the direct children of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    out.append(f.read().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return out


@remote
def plain(x):
    return x * 2


def backend_pid(c):
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    cur.close()
    return pid


def test_regular_role_runs_in_the_confined_worker(db, conn):
    assert plain(2) == 4
    kids = children(backend_pid(conn))
    assert any("bwrap" in k for k in kids), kids


def test_approved_hash_runs_in_process(db, connect):
    c = connect()
    with wormhole.connection(c):
        plain.install()
    with db.admin() as a:
        a.execute("SELECT wormhole_approve(%s)", (plain.hash,))
    c2 = connect()
    with wormhole.connection(c2):
        assert plain(3) == 6
    assert not any("bwrap" in k for k in children(backend_pid(c2)))


def test_trusted_role_runs_in_process(db, connect):
    with db.admin() as a:
        a.execute("INSERT INTO wormhole_trusted_roles (role_name, note) VALUES ('app', 'test')")
    c = connect()
    with wormhole.connection(c):
        assert plain(4) == 8
    assert not any("bwrap" in k for k in children(backend_pid(c)))


def test_disabled_untrusted_execution_refuses_unapproved_code(db, connect):
    with db.admin() as a:
        a.execute("UPDATE wormhole_settings SET value = 'disabled' "
                  "WHERE name = 'untrusted_execution'")
    c = connect()
    with wormhole.connection(c):
        with pytest.raises(errors.DatabaseError) as info:
            plain(1)
    assert info.value.sqlstate == "WH008"
    assert "approve" in (info.value.hint or "")


def test_boundary_self_test_enabled_the_worker(server):
    assert "confined worker: ok" in server.boundary


def test_unavailable_boundary_refuses_and_says_what_to_install(db, connect):
    """What `wormhole install` records when bubblewrap does not work on the server."""
    with db.admin() as a:
        a.execute("UPDATE wormhole_settings SET value = 'unavailable' "
                  "WHERE name = 'untrusted_execution'")
    c = connect()
    with wormhole.connection(c):
        with pytest.raises(errors.DatabaseError) as info:
            plain(1)
    assert info.value.sqlstate == "WH008"
    assert "apt-get install bubblewrap" in (info.value.hint or "")


def test_boundary_check_reports_a_missing_bubblewrap():
    from wormhole.runtime import sandbox

    ok, reason = sandbox.available(bwrap="/nonexistent/bwrap")
    assert not ok
    assert "bubblewrap" in reason


def test_nested_call_from_the_worker_is_a_clear_error(db, conn):
    @remote
    def inner():
        return 1

    inner.install()

    @remote
    def outer(h):
        try:
            return query("SELECT wormhole_execute($1, '[[],{}]') AS r", h)[0]["r"]
        except DatabaseError as e:
            return [e.sqlstate, str(e)]

    sqlstate, message = outer(inner.hash)
    assert sqlstate == "WH010"
    assert "cannot call another remote function" in message
    assert plain(5) == 10  # the worker is fine afterwards


DatabaseError = wormhole.DatabaseError
query = wormhole.query
