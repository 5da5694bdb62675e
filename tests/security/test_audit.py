"""P10: installs, rejections, failed calls, approvals and whitelist changes are audited."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from wormhole import remote

GOOD = "def audited(x):\n    return x\n"
BAD = "def audited_bad():\n    import os\n    return os.getcwd()\n"


def audit_log_events(server, since=0):
    time.sleep(0.3)
    out = []
    for line in server.log_text()[since:].splitlines():
        if "wormhole audit: " in line:
            out.append(json.loads(line.split("wormhole audit: ", 1)[1]))
    return out


def test_accepted_install_is_a_row(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        h = c.execute("SELECT wormhole_install(%s)", (GOOD,)).fetchone()[0]
    with db.admin() as a:
        row = a.execute("SELECT role, event, hash, name, source, verdict, at FROM wormhole_audit "
                        "WHERE hash = %s", (h,)).fetchone()
    assert row[:6] == ("app", "install", h, "audited", GOOD, "accepted")
    assert row[6] is not None


def test_rejected_install_survives_rollback_in_the_server_log(db, server):
    if server.cluster is None:
        pytest.skip("needs our own cluster's log")
    mark = len(server.log_text())
    with psycopg.connect(db.dsn()) as c:  # a transaction that will roll back
        with pytest.raises(psycopg.Error):
            c.execute("SELECT wormhole_install(%s)", (BAD,))
        c.rollback()
    events = [e for e in audit_log_events(server, mark) if e["event"] == "install"]
    assert events and events[-1]["verdict"] == "rejected"
    assert events[-1]["role"] == "app"
    assert "os" in events[-1]["reason"]
    assert events[-1]["source"] == BAD


def test_failed_call_is_logged(db, server, conn):
    if server.cluster is None:
        pytest.skip("needs our own cluster's log")

    @remote
    def explode():
        raise KeyError("nope")

    mark = len(server.log_text())
    with pytest.raises(KeyError):
        explode()
    events = audit_log_events(server, mark)
    assert any(e["event"] == "call-failed" and e["hash"] == explode.hash for e in events)


def test_whitelist_limit_and_approval_changes_are_rows(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c:
        h = c.execute("SELECT wormhole_install(%s)", (GOOD,)).fetchone()[0]
    with db.admin() as a:
        a.execute("UPDATE wormhole_allowed_modules SET allowed = false WHERE module_name = 'random'")
        a.execute("UPDATE wormhole_limits SET value = 5000 WHERE name = 'timeout_ms'")
        a.execute("SELECT wormhole_approve(%s, 'reviewed')", (h,))
        rows = a.execute("SELECT role, event, verdict, detail->>'table' FROM wormhole_audit "
                         "WHERE event = 'config' ORDER BY id").fetchall()
    tables = [r[3] for r in rows]
    assert "wormhole_allowed_modules" in tables
    assert "wormhole_limits" in tables
    assert "wormhole_approvals" in tables
    assert all(r[0] == "postgres" for r in rows)
