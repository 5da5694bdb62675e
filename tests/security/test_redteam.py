"""P2, P8 (and P3, P5, P9, P10 on the way): the red-team suite.

Every case in ``redteam_cases.py`` is shipped as source text through the real SQL API
(``SELECT wormhole_install(src)``, then ``SELECT wormhole_execute(hash, args)``) as the regular
role ``app`` on a real server, in the confined worker and, where it applies, approved by the
superuser so that it runs in-process inside the backend. Each case asserts its own outcome
precisely (rejected at install with WH002 and the finding's rule, and refused again at run time
when smuggled past the install; or an ``err`` payload of the expected type; or, for the near
misses, the right result) and then the shared postconditions:

* no file read outside the database: the canary file's secret is in no answer, the file is
  intact; no file written and no command run: no ``/tmp/wormhole_pwned_<run>*`` exists;
* no connection made: the canary TCP listener on 127.0.0.1 accepted nothing;
* the whitelist, limits, settings, approvals, trusted roles, functions and audit log are exactly
  as before the call (install steps: the audit grows by exactly the one ``accepted`` row of the
  case's hash, or by nothing for a rejection, which the server log records instead); no role,
  language function, large object or extension appeared; the caller is still ``app`` and not a
  superuser;
* no crash reset: a bystander session opened before the first case still answers after every
  case, and the server log since the case began shows no process terminated by a signal.

One database (made from the template, with a few extra whitelist entries and tighter limits)
and one bystander serve the whole module; every case gets its own ``app`` session, so a case
that taints its backend cannot influence the next one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.conftest import APP_ROLE, TEMPLATE

from .redteam_cases import CASES, Case

#: the DBA's per-call wall-clock limit in this suite (endless loops end here, in both modes).
TIMEOUT_MS = 1000
#: the caller's own statement_timeout: a backstop well above TIMEOUT_MS.
STATEMENT_TIMEOUT = "10s"
MAX_RESULT_BYTES = 8 * 1024 * 1024

#: server-log lines that mean a backend (or the postmaster) died: a crash reset.
CRASH_MARKERS = (
    "terminated by signal",
    "was terminated by",
    "all server processes terminated",
    "terminating any other active server processes",
    "crash of another server process",
    "database system was interrupted",
    "server process (PID",
)

SNAPSHOT_SQL = """
SELECT
  (SELECT md5(coalesce(string_agg(format('%s|%s|%s', module_name, allowed, names), ','
          ORDER BY module_name), '')) FROM public.wormhole_allowed_modules) AS whitelist,
  (SELECT md5(coalesce(string_agg(name || '=' || value, ',' ORDER BY name), ''))
     FROM public.wormhole_limits) AS limits,
  (SELECT md5(coalesce(string_agg(name || '=' || value, ',' ORDER BY name), ''))
     FROM public.wormhole_settings) AS settings,
  (SELECT md5(coalesce(string_agg(hash || approved_by, ',' ORDER BY hash), ''))
     FROM public.wormhole_approvals) AS approvals,
  (SELECT md5(coalesce(string_agg(role_name::text, ',' ORDER BY role_name), ''))
     FROM public.wormhole_trusted_roles) AS trusted,
  (SELECT md5(coalesce(string_agg(hash || md5(source), ',' ORDER BY hash), ''))
     FROM public.wormhole_functions) AS functions,
  (SELECT count(*) FROM public.wormhole_audit) AS audit_rows,
  (SELECT coalesce(max(id), 0) FROM public.wormhole_audit) AS audit_max,
  (SELECT count(*) FROM pg_catalog.pg_roles) AS roles,
  (SELECT rolsuper::text || rolcreaterole::text || rolcreatedb::text
     FROM pg_catalog.pg_roles WHERE rolname = 'app') AS app_attributes,
  (SELECT count(*) FROM pg_catalog.pg_auth_members m
     JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE r.rolname = 'app') AS app_grants,
  (SELECT count(*) FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l
     ON l.oid = p.prolang WHERE l.lanname LIKE 'plpython%') AS plpython_functions,
  (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata) AS large_objects,
  (SELECT count(*) FROM pg_catalog.pg_extension) AS extensions
"""


# --------------------------------------------------------------------------------------------
# the module's fixtures


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it is offered."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.sock.close()


@dataclass
class RedTeam:
    server: Any
    dbname: str
    token: str
    canary: str
    secret: str
    listener: Listener
    admin: psycopg.Connection[Any]
    bystander: psycopg.Connection[Any]
    admin_pid: int

    def dsn(self, user: str = APP_ROLE) -> str:
        return self.server.dsn(self.dbname, user)

    def app(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(), autocommit=True,
                               options=f"-c statement_timeout={STATEMENT_TIMEOUT}")

    def shared_app(self) -> psycopg.Connection[Any]:
        """One session for the cases whose code never runs (rejected at install and refused
        again before it runs): sharing it saves a worker start per case."""
        conn = getattr(self, "_shared", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._shared = self.app()
        return conn

    def pwned(self, case_id: str) -> str:
        return f"/tmp/wormhole_pwned_{self.token}_{case_id}"

    def render(self, case: Case, mode: str) -> str:
        src = (case.source.replace("@CANARY@", self.canary)
               .replace("@PWNED@", self.pwned(case.id))
               .replace("@PORT@", str(self.listener.port))
               .replace("@SECRET@", self.secret))
        # one hash per (case, mode): an approval for the in-process run never reaches the
        # worker run of the same case
        return src + f"# red-team case {case.id} ({mode})\n"

    def snapshot(self) -> dict[str, Any]:
        cur = self.admin.execute(SNAPSHOT_SQL)
        names = [d.name for d in cur.description or ()]
        return dict(zip(names, cur.fetchone() or ()))

    def audit_since(self, after_id: int) -> list[tuple[Any, ...]]:
        return self.admin.execute(
            "SELECT event, role::text, verdict, hash FROM public.wormhole_audit "
            "WHERE id > %s ORDER BY id", [after_id]).fetchall()

    def log_mark(self) -> int:
        cluster = self.server.cluster
        if cluster is None:
            return 0
        try:
            return os.path.getsize(cluster.logfile)
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        cluster = self.server.cluster
        if cluster is None:
            return ""
        with open(cluster.logfile, "rb") as f:
            f.seek(mark)
            return f.read().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def rt(server: Any) -> Iterator[RedTeam]:
    token = secrets.token_hex(6)
    dbname = f"redteam_{os.getpid()}_{token}"
    canary = f"/tmp/wormhole_canary_{token}"
    secret = f"WORMHOLE-CANARY-{secrets.token_hex(16)}"
    with open(canary, "w") as f:
        f.write(secret + "\n")
    os.chmod(canary, 0o644)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute(f"CREATE DATABASE {dbname} TEMPLATE {TEMPLATE}")
    admin = psycopg.connect(server.dsn(dbname), autocommit=True)
    admin.execute(
        "INSERT INTO public.wormhole_allowed_modules (module_name, allowed, names, notes) VALUES"
        " ('calendar', true, NULL, 'red team'), ('operator', true, NULL, 'red team'),"
        " ('typing', true, ARRAY['List', 'sys'], 'red team: a DBA listing a module name'),"
        " ('dataclasses', true, ARRAY['dataclass', 'inspect'], 'red team')"
        " ON CONFLICT (module_name) DO UPDATE SET allowed = EXCLUDED.allowed,"
        " names = EXCLUDED.names")
    admin.execute("UPDATE public.wormhole_limits SET value = %s WHERE name = 'timeout_ms'",
                  [TIMEOUT_MS])
    admin.execute("UPDATE public.wormhole_limits SET value = %s "
                  "WHERE name = 'max_result_bytes'", [MAX_RESULT_BYTES])
    admin_pid = admin.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    bystander = psycopg.connect(server.dsn(dbname, APP_ROLE), autocommit=True)
    bystander.execute("SELECT 1")
    listener = Listener()
    team = RedTeam(server, dbname, token, canary, secret, listener, admin, bystander, admin_pid)
    try:
        yield team
    finally:
        listener.close()
        shared = getattr(team, "_shared", None)
        if shared is not None:
            shared.close()
        bystander.close()
        admin.close()
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        for path in glob.glob(f"/tmp/wormhole_pwned_{token}*"):
            os.unlink(path)
        os.unlink(canary)


# --------------------------------------------------------------------------------------------
# one case


def source_hash(src: str) -> str:
    return hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest()


def findings_of(exc: psycopg.Error) -> list[str]:
    detail = exc.diag.message_detail or ""
    try:
        return [f[2] for f in json.loads(detail)["findings"]]
    except (ValueError, KeyError, TypeError):
        return []


def execute(rt: RedTeam, app: psycopg.Connection[Any], h: str, case: Case) -> tuple[str, dict]:
    args = case.args.replace("@ADMINPID@", str(rt.admin_pid)).replace("@HASH@", h)
    text = app.execute("SELECT wormhole_execute(%s, %s)", [h, args]).fetchone()[0]  # type: ignore[index]
    return text, json.loads(text)


def smuggle(rt: RedTeam, src: str, h: str, mode: str) -> None:
    """Put a source the policy refused straight into the table, as only a superuser can (or a
    policy change, or a restore from elsewhere would): the run-time re-check must refuse it."""
    rt.admin.execute(
        "INSERT INTO public.wormhole_functions (hash, name, source, installed_by) "
        "VALUES (%s, 'f', %s, 'postgres') ON CONFLICT (hash) DO NOTHING", [h, src])
    if mode == "in-process":
        rt.admin.execute("SELECT wormhole_approve(%s)", [h])


def install(rt: RedTeam, app: psycopg.Connection[Any], src: str, h: str, mode: str) -> None:
    before = rt.snapshot()
    got = app.execute("SELECT wormhole_install(%s)", [src]).fetchone()[0]  # type: ignore[index]
    assert got == h
    # the audit grows by exactly this install, as the calling role
    rows = rt.audit_since(before["audit_max"])
    assert rows == [("install", APP_ROLE, "accepted", h)], rows
    if mode == "in-process":
        rt.admin.execute("SELECT wormhole_approve(%s)", [h])


def check_rejected(rt: RedTeam, app: psycopg.Connection[Any], case: Case, src: str,
                   h: str) -> None:
    before = rt.snapshot()
    mark = rt.log_mark()
    with pytest.raises(psycopg.Error) as info:
        app.execute("SELECT wormhole_install(%s)", [src])
    assert info.value.sqlstate == "WH002", (info.value.sqlstate, str(info.value))
    rules = findings_of(info.value)
    assert case.rule in rules or (not rules and case.rule == "too-large"), (case.rule, rules,
                                                                           str(info.value))
    after = rt.snapshot()
    assert after == before, "a rejected install changed wormhole's tables"
    if rt.server.cluster is not None:
        deadline = time.monotonic() + 2
        while True:  # the logger writes asynchronously
            log = rt.log_since(mark)
            if h in log or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert f'"hash": "{h}"' in log and '"verdict": "rejected"' in log, \
            "the rejected install is not in the server log's audit lines"


def check_outcome(case: Case, text: str, payload: dict) -> None:
    if case.expect == "ok":
        assert "err" not in payload, text[:2000]
        assert payload["ok"] == case.result, text[:2000]
        return
    assert "err" in payload, f"expected a failure, got: {text[:2000]}"
    err = payload["err"]
    if case.expect == "reject":
        assert err["type"] == "RejectedFunction" and err.get("sqlstate") == "WH002", err
        assert case.rule in [f[2] for f in err.get("findings", [])], err
        return
    assert err["type"] in case.errors, err
    if case.refs:  # query cases: any of the listed SQLSTATEs
        assert err.get("sqlstate") in case.refs, err
    if case.sqlstate is not None:
        assert err.get("sqlstate") == case.sqlstate, err
    if case.limit is not None and err["type"] == "LimitExceeded":
        assert err.get("limit") == case.limit, err
    if case.message is not None:
        assert case.message in err["message"], err


def postconditions(rt: RedTeam, case: Case, before: dict[str, Any], mark: int,
                   answers: list[str], app: psycopg.Connection[Any] | None) -> None:
    for text in answers:
        assert rt.secret not in text, "the canary file's content came back"
    with open(rt.canary) as f:
        assert f.read() == rt.secret + "\n", "the canary file changed"
    made = glob.glob(f"/tmp/wormhole_pwned_{rt.token}*")
    assert not made, f"files written outside the database: {made}"
    assert rt.listener.connections == 0, "a connection reached the canary listener"
    assert rt.snapshot() == before, "wormhole's tables, roles or catalog changed"
    if app is not None and not app.closed:
        row = app.execute("SELECT current_user::text, session_user::text").fetchone()
        assert row == (APP_ROLE, APP_ROLE), row
    assert rt.bystander.execute("SELECT 42").fetchone() == (42,), \
        "the bystander session is gone: crash reset?"
    log = rt.log_since(mark)
    for marker in CRASH_MARKERS:
        assert marker not in log, f"crash reset in the server log ({marker!r}):\n{log[-3000:]}"


def _params() -> list[Any]:
    out = []
    for case in CASES:
        for mode in case.modes:
            marks = []
            if case.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
            out.append(pytest.param(case, mode, id=f"{case.family}/{case.id}/{mode}",
                                    marks=marks))
    return out


@pytest.mark.parametrize(("case", "mode"), _params())
def test_redteam(rt: RedTeam, case: Case, mode: str) -> None:
    src = rt.render(case, mode)
    h = source_hash(src)
    mark = rt.log_mark()
    answers: list[str] = []
    # code that runs gets a session of its own: whatever it does to its backend or its worker
    # cannot reach the next case
    shared = case.expect == "reject"
    app = rt.shared_app() if shared else rt.app()
    try:
        if case.expect == "reject":
            check_rejected(rt, app, case, src, h)
            smuggle(rt, src, h, mode)
        else:
            install(rt, app, src, h, mode)
        before = rt.snapshot()
        try:
            text, payload = execute(rt, app, h, case)
        except psycopg.Error as exc:  # the statement itself failed: say which case and why
            answers.append(str(exc))
            pytest.fail(f"wormhole_execute raised {exc.sqlstate}: {exc}")
        answers.append(text)
        check_outcome(case, text, payload)
        postconditions(rt, case, before, mark, answers, app)
    finally:
        if not shared:
            app.close()


# --------------------------------------------------------------------------------------------
# the suite itself


def test_enough_distinct_attacks() -> None:
    attacks = [c for c in CASES if c.expect != "ok"]
    assert len(attacks) >= 100, len(attacks)
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    assert len({c.source for c in CASES}) == len(CASES), "case sources must be distinct"
    assert len([c for c in CASES if c.expect == "ok"]) >= 10
    families = {c.family for c in attacks}
    for family in ("builtins", "object-graph", "frames", "format", "disguise",
                   "implicit-calls", "str-subclass", "exceptions", "hooks", "modules", "plpy",
                   "shared-state", "resources", "crashers", "return-values", "query"):
        assert family in families, family
