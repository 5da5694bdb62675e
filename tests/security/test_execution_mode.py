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


def _run_sql(c, sql):
    cur = c.cursor()
    cur.execute(sql)
    cur.close()


def test_a_revoked_approval_reaches_a_warm_session_at_its_next_transaction(db, connect):
    """The backend caches the configuration (no version read on a warm call); a revoke made
    elsewhere still sends this session's next transaction to the worker."""
    c = connect(autocommit=True)
    with wormhole.connection(c):
        plain.install()
        with db.admin() as a:
            a.execute("SELECT wormhole_approve(%s)", (plain.hash,))
        for i in range(3):
            assert plain(i) == 2 * i  # warm, in-process, configuration cached
        assert not any("bwrap" in k for k in children(backend_pid(c)))
        with db.admin() as a:
            a.execute("SELECT wormhole_revoke(%s)", (plain.hash,))
        assert plain(5) == 10
    assert any("bwrap" in k for k in children(backend_pid(c)))


def test_a_stale_snapshot_never_marks_the_configuration_current(db, connect):
    """In REPEATABLE READ the version is read from a snapshot that may predate a change this
    backend has already been told about: such a read must not be cached as current, or the
    change would be missed until the next one."""
    db.setup_sql("CREATE TABLE untouched (x int)")
    c = connect(autocommit=True)
    with wormhole.connection(c):
        plain.install()
        with db.admin() as a:
            a.execute("SELECT wormhole_approve(%s)", (plain.hash,))
        assert plain(1) == 2  # in-process; the configuration is marked current (READ COMMITTED)
        _run_sql(c, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        _run_sql(c, "SELECT 1")  # the transaction's snapshot is taken here
        with db.admin() as a:
            a.execute("SELECT wormhole_revoke(%s)", (plain.hash,))
        _run_sql(c, "SELECT * FROM untouched")  # a new lock: the invalidation is processed
        assert plain(2) == 4  # reads the old version in the old snapshot (allowed: in-process)
        _run_sql(c, "COMMIT")
        assert not any("bwrap" in k for k in children(backend_pid(c)))
        assert plain(3) == 6  # a new transaction: the revoke applies
    assert any("bwrap" in k for k in children(backend_pid(c)))


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
