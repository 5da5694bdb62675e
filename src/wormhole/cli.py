"""``wormhole``: the command line for DBAs and developers.

    wormhole schema                       print the install/upgrade SQL (same as schema.sql)
    wormhole install --dsn DSN            install or upgrade the schema; check the OS boundary
    wormhole approve HASH --dsn DSN       let one function run in-process (audited)
    wormhole revoke HASH --dsn DSN        withdraw an approval
    wormhole status --dsn DSN             version, boundary, whitelist, counts
    wormhole demo [--dsn DSN]             the README demo (throwaway cluster by default)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import schema
from .runtime import VERSION


def _connect(dsn: str) -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is in every install path we document
        raise SystemExit("wormhole: the CLI needs psycopg (pip install 'psycopg[binary]')")
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise SystemExit(f"wormhole: cannot connect: {exc}") from None


def install_schema(conn: Any) -> str:
    """Run the install/upgrade script over ``conn`` (a superuser psycopg connection).

    Returns the boundary self-test's verdict (whether the confined worker works here).
    """
    cur = conn.cursor()
    cur.execute(schema.generate(for_psql=False))  # no parameters: simple protocol, many stmts
    cur.close()
    row = conn.execute("SELECT public._wormhole_selftest()").fetchone()
    return str(row[0]) if row else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wormhole", description="wormhole for PostgreSQL")
    parser.add_argument("--version", action="version", version=f"wormhole {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("schema", help="print the install/upgrade SQL")
    p = sub.add_parser("install", help="install or upgrade the schema (as a superuser)")
    p.add_argument("--dsn", required=True)
    p.add_argument("--grant", action="append", default=[], metavar="ROLE",
                   help="grant wormhole_user to ROLE (repeatable)")
    p = sub.add_parser("approve", help="approve a function hash for in-process execution")
    p.add_argument("hash")
    p.add_argument("--dsn", required=True)
    p.add_argument("--note")
    p = sub.add_parser("revoke", help="withdraw an approval")
    p.add_argument("hash")
    p.add_argument("--dsn", required=True)
    p = sub.add_parser("status", help="show version, boundary and whitelist")
    p.add_argument("--dsn", required=True)
    p = sub.add_parser("demo", help="run the README demo")
    p.add_argument("--dsn", help="use this database instead of a throwaway cluster")
    args = parser.parse_args(argv)

    if args.command == "schema":
        sys.stdout.write(schema.generate())
        return 0
    if args.command == "demo":
        from . import demo

        return demo.main(args.dsn)
    import psycopg

    conn = _connect(args.dsn)
    try:
        return _run(args, conn)
    except psycopg.Error as exc:
        diag = exc.diag
        print(f"wormhole: {diag.message_primary or exc}", file=sys.stderr)
        if diag.message_hint:
            print(f"hint: {diag.message_hint}", file=sys.stderr)
        return 1
    finally:
        conn.close()


def _run(args: argparse.Namespace, conn: Any) -> int:
    """The commands that talk to a database, over ``conn`` (autocommit, as given)."""
    if args.command == "install":
        verdict = install_schema(conn)
        for role in args.grant:
            conn.execute(f'GRANT wormhole_user TO "{role}"')
        print(f"wormhole {VERSION} installed")
        print(verdict)
        return 0 if "ok" in verdict else 2
    if args.command == "approve":
        conn.execute("SELECT public.wormhole_approve(%s, %s)", [args.hash, args.note])
        print(f"approved {args.hash}")
        return 0
    if args.command == "revoke":
        conn.execute("SELECT public.wormhole_revoke(%s)", [args.hash])
        print(f"revoked {args.hash}")
        return 0
    if args.command == "status":
        version = conn.execute("SELECT public.wormhole_version()").fetchone()
        print(f"schema version: {version[0] if version else '?'}")
        for name, value in conn.execute(
            "SELECT name, value FROM public.wormhole_settings ORDER BY name"
        ):
            print(f"{name}: {value}")
        mods = conn.execute(
            "SELECT module_name FROM public.wormhole_allowed_modules WHERE allowed "
            "ORDER BY 1"
        ).fetchall()
        print("allowed modules: " + ", ".join(m[0] for m in mods))
        n = conn.execute("SELECT count(*) FROM public.wormhole_functions").fetchone()
        print(f"installed functions: {n[0] if n else 0}")
        return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
