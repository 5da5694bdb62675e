"""Issue 5 memory target: a warm call leaves nothing behind in the backend.

Counted, not timed: Python's allocated-block count of the backend (``sys.getallocatedblocks``)
before and after many calls in one session (after ``gc.collect()``: a call's globals are
reference cycles that the collector frees later). PostgreSQL 15's PL/Python never frees a
``plpy.subtransaction()`` object (an empty ``tp_dealloc``) and every call runs in one, so
without the runtime's repair each call leaked one block (~32 bytes of RSS per call).
"""

from __future__ import annotations

import psycopg

import wormhole
from wormhole import query, remote

CALLS = 2000


@remote
def summary(x):
    rows = query("SELECT $1::int + 1 AS y", x)
    return {"y": rows[0]["y"], "n": len(rows)}


def _check(db, approve: bool) -> None:
    with psycopg.connect(db.dsn(), autocommit=True) as app:
        with wormhole.connection(app):
            assert summary(1) == {"y": 2, "n": 1}
    with db.admin() as admin:
        if approve:
            admin.execute("SELECT wormhole_approve(%s)", (summary.hash,))
        admin.execute("SELECT public._wormhole_boot()")
        admin.execute("SET ROLE app")
        for _ in range(3):  # warm: config, plans, compile cache, the worker
            admin.execute("SELECT public.wormhole_execute(%s, '[[1],{}]')", (summary.hash,))
        admin.execute("RESET ROLE")
        admin.execute(f"""DO LANGUAGE plpython3u $x$
import gc, sys
rt = GD['wormhole.runtime/{wormhole.runtime.VERSION}']
ex = rt.host.execute
h = '{summary.hash}'
for i in range({CALLS}):  # fills the interpreter's free lists (tuples, dicts...) first
    ex(plpy, GD, rt.SOURCES, h, '[[%d],{{}}]' % (i % 7), 'report')
gc.collect()
before = sys.getallocatedblocks()
for i in range({CALLS}):
    out = ex(plpy, GD, rt.SOURCES, h, '[[%d],{{}}]' % (i % 7), 'report')
    assert out.startswith('{{"ok":'), out
del out
gc.collect()
grew = sys.getallocatedblocks() - before
assert grew < {CALLS} // 10, f'{{grew}} blocks left behind by {CALLS} calls'
gc.collect()
before = sys.getallocatedblocks()
for i in range({CALLS}):
    plpy.subtransaction()
gc.collect()
grew = sys.getallocatedblocks() - before
assert grew < {CALLS} // 10, f'{{grew}} blocks left behind by {CALLS} subtransaction objects'
$x$""")


def test_in_process_calls_leave_no_blocks_behind(db):
    _check(db, approve=True)


def test_worker_calls_leave_no_blocks_behind(db):
    _check(db, approve=False)
