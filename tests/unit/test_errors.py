"""The error tree: SQLSTATE lookup, remote classes that keep built-in types, pickling."""

from __future__ import annotations

import pickle

import pytest

from wormhole import errors
from wormhole.runtime import errors as rt_errors


@pytest.mark.parametrize(
    "sqlstate, cls",
    [
        ("23505", errors.UniqueViolation),
        ("23999", errors.IntegrityError),
        ("40001", errors.SerializationFailure),
        ("40P01", errors.DeadlockDetected),
        ("57014", errors.QueryCanceled),
        ("08006", errors.OperationalError),
        ("42P01", errors.UndefinedTable),
        ("22012", errors.DataError),
        ("WH003", errors.ForbiddenStatement),
        ("25006", errors.ReadOnlySqlTransaction),
        ("XX000", errors.DatabaseError),
        (None, errors.DatabaseError),
    ],
)
def test_lookup_by_sqlstate(sqlstate, cls):
    assert errors.lookup(sqlstate) is cls


def test_database_error_is_the_class_remote_code_catches():
    exc = errors.UniqueViolation("duplicate key", "23505", "Key (id)=(1)", "use another id")
    assert isinstance(exc, rt_errors.DatabaseError)
    assert isinstance(exc, errors.WormholeError)
    assert exc.sqlstate == "23505"
    assert str(exc) == "duplicate key\nDETAIL: Key (id)=(1)\nHINT: use another id"
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is errors.UniqueViolation and again.sqlstate == "23505"


@pytest.mark.parametrize("name", ["ValueError", "KeyError", "ZeroDivisionError", "RuntimeError"])
def test_remote_builtin_keeps_its_type(name):
    cls = errors.remote_class(name)
    exc = cls("message")
    assert isinstance(exc, errors.RemoteError)
    import builtins

    assert isinstance(exc, getattr(builtins, name))


def test_unknown_or_unsafe_types_fall_back_to_remote_error():
    assert errors.remote_class("Oops") is errors.RemoteError
    assert errors.remote_class("OSError") is errors.RemoteError  # different C layout
    assert errors.remote_class("SystemExit") is errors.RemoteError  # not an Exception


def test_argument_error_is_a_type_error():
    assert issubclass(errors.ArgumentError, TypeError)
    assert issubclass(errors.ArgumentError, errors.InterfaceError)
