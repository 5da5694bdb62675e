"""A new backend starts its confined worker early, while it imports the runtime, only when the
call will most likely run there; the host still decides, and adopts that very worker.

``_wormhole_worker_hint`` is the prediction (``runtime/spawn.py``); ``wh_worker()`` (a
superuser's helper, for the test only) reads the backend's executor to show the worker the call
ran in is the one started early, and ``/proc`` shows which processes the backend started.
"""

from __future__ import annotations

import os
import time

import psycopg
import pytest

import wormhole
from wormhole import errors, remote

from tests.helpers import WORKER_PROBE_SQL, bwrap_children, pipe_size, worker_state

@remote
def twice(x):
    return int(query("SELECT $1::int * 2 AS v", x)[0]["v"])  # noqa: F821 - (the worker runs it)


@pytest.fixture
def probe(db):
    db.setup_sql(WORKER_PROBE_SQL, grant=False)
    return db


_worker_state = worker_state
_bwrap_children = bwrap_children
_pipe_size = pipe_size


def _installed(db):
    with psycopg.connect(db.dsn(), autocommit=True) as c, wormhole.connection(c):
        twice.install()


def _first_call(db, x=21):
    """A new connection, one remote call; returns (connection, result) (caller closes)."""
    c = psycopg.connect(db.dsn(), autocommit=True)
    with wormhole.connection(c):
        return c, twice(x)


def test_a_new_backend_adopts_the_worker_it_started_early(probe):
    _installed(probe)
    c, result = _first_call(probe)
    with c:
        assert result == 42
        state = _worker_state(c)
        assert state == {"executor": True, "adopted": True, "starts": 1, "pending": 0}
        pid = c.info.backend_pid
        (bwrap,) = _bwrap_children(pid)  # the early worker is the one: no second start
        # its boot pipe was enlarged to take the whole boot frame at once, and is back to the
        # default once the worker answered (the kernel counts capacity, not use, per user)
        assert _pipe_size(bwrap, 0) == 65536
        with wormhole.connection(c):
            assert twice(5) == 10
        assert _worker_state(c)["starts"] == 1


def test_a_worker_that_dies_is_replaced_by_a_fresh_start(probe):
    _installed(probe)
    c, _ = _first_call(probe)
    with c:
        (worker,) = _bwrap_children(c.info.backend_pid)
        os.kill(worker, 9)
        for _ in range(200):  # until the kernel has it dead (a zombie, the backend's child)
            with open(f"/proc/{worker}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in "ZX":
                    break
            time.sleep(0.01)
        with wormhole.connection(c):
            assert twice(4) == 8  # the next call finds it dead and starts a new one
        assert _bwrap_children(c.info.backend_pid) != [worker]
        state = _worker_state(c)
        assert state["starts"] == 2 and not state["adopted"] and state["pending"] == 0


def test_an_approved_function_starts_no_worker(probe):
    _installed(probe)
    with probe.admin() as a:
        a.execute("SELECT wormhole_approve(%s)", (twice.hash,))
    c, result = _first_call(probe)
    with c:
        assert result == 42
        assert _worker_state(c) == {"executor": False, "adopted": False, "starts": 0,
                                    "pending": 0}
        assert _bwrap_children(c.info.backend_pid) == []


def test_a_trusted_role_starts_no_worker(probe):
    _installed(probe)
    with probe.admin() as a:
        a.execute("INSERT INTO wormhole_trusted_roles (role_name, note) VALUES ('app', 'test')")
    c, result = _first_call(probe)
    with c:
        assert result == 42
        assert _bwrap_children(c.info.backend_pid) == []
        assert _worker_state(c)["pending"] == 0


def test_disabled_untrusted_execution_starts_no_worker(probe):
    _installed(probe)
    with probe.admin() as a:
        a.execute("UPDATE wormhole_settings SET value = 'disabled' "
                  "WHERE name = 'untrusted_execution'")
    c = psycopg.connect(probe.dsn(), autocommit=True)
    with c:
        with wormhole.connection(c), pytest.raises(errors.DatabaseError) as info:
            twice(1)
        assert info.value.sqlstate == "WH008"
        assert _bwrap_children(c.info.backend_pid) == []


def test_a_wrong_prediction_leaves_no_worker_running(probe):
    """A hint that says "worker" for a call the host runs in-process (here forced by replacing
    the hint with one that always says yes): the early worker is stopped, never used."""
    _installed(probe)
    with probe.admin() as a:
        a.execute("SELECT wormhole_approve(%s)", (twice.hash,))
        a.execute("CREATE OR REPLACE FUNCTION public._wormhole_worker_hint(text, text) "
                  "RETURNS boolean LANGUAGE sql AS 'SELECT true'"
                  .replace("(text, text)", "(function_hash text, role_name text)"))
    c, result = _first_call(probe)
    with c:
        assert result == 42
        assert _bwrap_children(c.info.backend_pid) == []
        assert _worker_state(c) == {"executor": False, "adopted": False, "starts": 0,
                                    "pending": 0}


@pytest.mark.parametrize("case, expected", [
    ("plain", True),
    ("approved", False),
    ("trusted", False),
    ("disabled", False),
    ("malformed", False),
    ("null", False),
])
def test_the_hint_predicts_what_the_host_decides(probe, case, expected):
    fn_hash = twice.hash
    with probe.admin() as a:
        if case == "approved":
            _installed(probe)
            a.execute("SELECT wormhole_approve(%s)", (fn_hash,))
        elif case == "trusted":
            a.execute("INSERT INTO wormhole_trusted_roles (role_name) VALUES ('app')")
        elif case == "disabled":
            a.execute("UPDATE wormhole_settings SET value = 'disabled' "
                      "WHERE name = 'untrusted_execution'")
    if case == "malformed":
        fn_hash = "x' OR true --"
    elif case == "null":
        fn_hash = None
    with psycopg.connect(probe.dsn(), autocommit=True) as c:
        got = c.execute("SELECT public._wormhole_worker_hint(%s, current_user::text)",
                        (fn_hash, )).fetchone()[0]
    assert got is expected


def test_the_hint_is_not_public(probe):
    with probe.admin() as a:
        a.execute("DROP ROLE IF EXISTS nobody_here")
        a.execute("CREATE ROLE nobody_here LOGIN")
    try:
        with psycopg.connect(probe.dsn(user="nobody_here"), autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT public._wormhole_worker_hint(%s, 'x')", ("0" * 64,))
    finally:
        with probe.admin() as a:
            a.execute("DROP ROLE nobody_here")
