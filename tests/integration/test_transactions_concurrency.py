"""Real concurrency: write skew, deadlocks, and a bank whose books must balance.

Every worker is a thread with its own connection. Each logical unit records itself in a table
whose primary key is the unit's id, so a unit applied twice would fail with a unique violation
(not retryable: the test would see it) and a lost one would be missing from the table.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Any

import pytest

from tests.integration.test_transactions import fresh, make_connector, make_module_db
from wormhole import connection, query, remote, transaction
from wormhole.transaction import RetryEvent, set_retry_defaults

ACCOUNTS = 5
START = 1000

BANK_SCHEMA = (
    "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);"
    f"INSERT INTO accounts SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g;"
    # one row per logical transfer, declined ones included (amount 0): exactly once, none lost
    "CREATE TABLE transfers (id int PRIMARY KEY, src int, dst int, amount bigint NOT NULL);"
    "CREATE TABLE oncall (doctor int PRIMARY KEY, on_call bool NOT NULL);"
    "INSERT INTO oncall SELECT g, true FROM generate_series(1, 4) g;"
    "CREATE TABLE decisions (doctor int PRIMARY KEY, went_off bool NOT NULL);"
)


@pytest.fixture(scope="module")
def module_db(server):
    yield from make_module_db(server)


@pytest.fixture
def connect(module_db, driver_name):
    yield from make_connector(module_db, driver_name)


@pytest.fixture
def bank(module_db):
    database = fresh(module_db, BANK_SCHEMA)
    with database.admin() as admin:
        # deadlocks are found after deadlock_timeout (1 s by default): keep the tests quick
        admin.execute(f"ALTER ROLE app IN DATABASE {database.name} SET deadlock_timeout = '50ms'")
    return database


@pytest.fixture
def events():
    """Every retry (runner or standalone), recorded thread-safely."""
    seen: list[RetryEvent] = []
    lock = threading.Lock()

    def record(event: RetryEvent) -> None:
        with lock:
            seen.append(event)

    old = set_retry_defaults(max_retries=100, backoff=0.002, max_backoff=0.05, on_retry=record)
    yield seen
    set_retry_defaults(max_retries=old.max_retries, backoff=old.backoff,
                       max_backoff=old.max_backoff, on_retry=old.on_retry)


def in_threads(n: int, target, *args) -> list[Any]:
    """Run ``target(i, *args)`` in n threads; re-raise the first failure."""
    results: list[Any] = [None] * n
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = target(i, *args)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if failures:
        raise failures[0]
    return results


def sqlstates(events: list[RetryEvent]) -> Counter[str | None]:
    return Counter(getattr(e.error, "sqlstate", None) for e in events)


# --- write skew -------------------------------------------------------------------------------

def go_off_call(doctor: int, barrier: threading.Barrier, attempts: list[int]) -> bool:
    """The classic write skew: leave if someone else is still on call."""
    attempts.append(1)
    n = query("SELECT count(*) AS n FROM oncall WHERE on_call")[0]["n"]
    if len(attempts) == 1:
        barrier.wait(10)  # everybody has read before anybody writes: a certain conflict
    went_off = n >= 2
    if went_off:
        query("UPDATE oncall SET on_call = false WHERE doctor = $1", doctor)
    query("INSERT INTO decisions VALUES ($1, $2)", doctor, went_off)
    return went_off


@pytest.mark.parametrize("isolation", ["serializable", "repeatable read"])
def test_write_skew(bank, connect, events, isolation):
    doctors = 4
    barrier = threading.Barrier(doctors)
    conns = [connect() for _ in range(doctors)]

    def worker(i: int) -> bool:
        return transaction(isolation=isolation, conn=conns[i]).run(
            go_off_call, i + 1, barrier, []
        )

    results = in_threads(doctors, worker)
    with bank.admin() as admin:
        on_call = admin.execute("SELECT count(*) FROM oncall WHERE on_call").fetchone()[0]
        decisions = admin.execute("SELECT count(*), count(*) FILTER (WHERE went_off) "
                                  "FROM decisions").fetchone()
    if isolation == "serializable":
        # equal to a serial order: the first three leave, the last one stays; each unit once
        assert on_call == 1 and sum(results) == doctors - 1
        assert tuple(decisions) == (doctors, doctors - 1)
        assert events and set(sqlstates(events)) == {"40001"}
    else:
        # the control: snapshot isolation lets the anomaly through (nobody is on call)
        assert on_call == 0 and tuple(decisions) == (doctors, doctors)
        assert events == []


# --- deadlocks --------------------------------------------------------------------------------

def move(tid: int, src: int, dst: int, amount: int, barrier: threading.Barrier | None = None,
         attempts: list[int] | None = None) -> bool:
    """One bank transfer; declined (and recorded with amount 0) when funds are short."""
    if attempts is not None:
        attempts.append(1)
    balance = query("SELECT balance FROM accounts WHERE id = $1", src)[0]["balance"]
    if balance < amount:
        query("INSERT INTO transfers VALUES ($1, $2, $3, 0)", tid, src, dst)
        return False
    query("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, src)
    if barrier is not None and attempts is not None and len(attempts) == 1:
        barrier.wait(10)  # both hold their first row: opposite orders now deadlock
    query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, dst)
    query("INSERT INTO transfers VALUES ($1, $2, $3, $4)", tid, src, dst, amount)
    return True


def check_books(bank, expected_ids: set[int], moved: dict[int, bool]) -> None:
    """Total conserved, every transfer exactly once, balances equal to the recorded transfers."""
    with bank.admin() as admin:
        balances = dict(admin.execute("SELECT id, balance FROM accounts").fetchall())
        recorded = admin.execute("SELECT id, src, dst, amount FROM transfers").fetchall()
    assert sum(balances.values()) == ACCOUNTS * START
    assert {r[0] for r in recorded} == expected_ids and len(recorded) == len(expected_ids)
    assert {r[0] for r in recorded if r[3] > 0} == {t for t, ok in moved.items() if ok}
    for account, balance in balances.items():
        outgoing = sum(r[3] for r in recorded if r[1] == account)
        incoming = sum(r[3] for r in recorded if r[2] == account)
        assert balance == START - outgoing + incoming >= 0


def test_deadlock_from_opposite_order_updates_is_retried(bank, connect, events):
    barrier = threading.Barrier(2)
    conns = [connect(), connect()]
    pairs = [(1, 2), (2, 1)]

    def worker(i: int) -> bool:
        src, dst = pairs[i]
        return transaction(conn=conns[i]).run(move, i, src, dst, 10, barrier, [])

    assert in_threads(2, worker) == [True, True]
    assert sqlstates(events) == Counter({"40P01": 1})  # one victim, retried once
    check_books(bank, {0, 1}, {0: True, 1: True})


@remote(echo=False)
def ping():
    return 1


@remote(echo=False)
def remote_move_slowly(tid, src, dst, amount):
    query("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, src)
    query("SELECT pg_sleep(0.3)")  # both calls hold their first row: opposite orders deadlock
    query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, dst)
    query("INSERT INTO transfers VALUES ($1, $2, $3, $4)", tid, src, dst, amount)
    return tid


def test_deadlock_between_standalone_remote_calls_is_retried(bank, connect, events):
    conns = [connect(), connect()]
    pairs = [(1, 2), (2, 1)]
    for c in conns:
        with connection(c):
            ping()  # start each backend's worker up front, so both calls run in step

    def worker(i: int) -> int:
        src, dst = pairs[i]
        with connection(conns[i]):
            return remote_move_slowly(i, src, dst, 10)

    assert in_threads(2, worker) == [0, 1]
    # at least one victim, retried; on a loaded machine (CI beside other work) a retry can meet
    # the other call again and be retried once more (seen once in the sixth session's CI)
    deadlocks = sqlstates(events)
    assert set(deadlocks) == {"40P01"} and 1 <= deadlocks["40P01"] <= 3, deadlocks
    assert all("standalone" in e.unit for e in events)
    check_books(bank, {0, 1}, {0: True, 1: True})


# --- the bank: hundreds of concurrent transfers ------------------------------------------------

@remote(echo=False)
def remote_move(tid, src, dst, amount):
    balance = query("SELECT balance FROM accounts WHERE id = $1", src)[0]["balance"]
    if balance < amount:
        query("INSERT INTO transfers VALUES ($1, $2, $3, 0)", tid, src, dst)
        return False
    query("UPDATE accounts SET balance = balance - $1 WHERE id = $2", amount, src)
    query("UPDATE accounts SET balance = balance + $1 WHERE id = $2", amount, dst)
    query("INSERT INTO transfers VALUES ($1, $2, $3, $4)", tid, src, dst, amount)
    return True


WORKERS = 4
PER_WORKER = 75


def plan(worker: int) -> list[tuple[int, int, int, int]]:
    rng = random.Random(worker)
    out = []
    for k in range(PER_WORKER):
        src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
        out.append((worker * PER_WORKER + k, src, dst, rng.randint(1, 400)))
    return out


@pytest.mark.parametrize("mode", ["client", "remote-standalone", "remote-in-runner"])
def test_bank_invariant_under_concurrent_transfers(bank, connect, events, mode):
    """300 transfers over 5 accounts from 4 threads, SERIALIZABLE: many conflicts, retried;
    the books balance, every transfer is recorded exactly once, no balance goes negative."""
    if mode == "remote-standalone":
        # a standalone call is its own transaction, at the session's isolation level
        with bank.admin() as admin:
            admin.execute(f"ALTER ROLE app IN DATABASE {bank.name} "
                          "SET default_transaction_isolation = 'serializable'")
    conns = [connect(autocommit=(i % 2 == 1)) for i in range(WORKERS)]
    serializable = transaction(isolation="serializable")
    def worker(i: int) -> dict[int, bool]:
        done: dict[int, bool] = {}
        with connection(conns[i]):
            for tid, src, dst, amount in plan(i):
                if mode == "client":
                    done[tid] = serializable.run(move, tid, src, dst, amount)
                elif mode == "remote-standalone":
                    done[tid] = remote_move(tid, src, dst, amount)
                else:
                    done[tid] = serializable.run(remote_move, tid, src, dst, amount)
        return done

    moved: dict[int, bool] = {}
    for part in in_threads(WORKERS, worker):
        moved.update(part)
    assert len(moved) == WORKERS * PER_WORKER
    check_books(bank, set(moved), moved)
    assert any(moved.values()) and not all(moved.values())  # both paths were exercised
    assert events, "no conflict at all: the test did not test retries"
    assert set(sqlstates(events)) <= {"40001", "40P01"}
    if mode == "remote-standalone":
        assert all("standalone" in e.unit for e in events)
    else:
        assert not any("standalone" in e.unit for e in events)
