"""One source of truth: the checked-in schema.sql is exactly what the generator produces."""

from __future__ import annotations

import ast
from pathlib import Path

from wormhole import schema
from wormhole.runtime import MODULES, WORKER_MODULES

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_schema_sql_is_fresh():
    expected = schema.generate()
    actual = (ROOT / "schema.sql").read_text("utf-8")
    assert actual == expected, "schema.sql is stale: run `wormhole schema > schema.sql`"


def test_runtime_is_stdlib_only_and_never_imports_plpy():
    import sys

    stdlib = set(sys.stdlib_module_names)
    for name in ("__init__", *MODULES):
        tree = ast.parse((ROOT / "src/wormhole/runtime" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    assert top in stdlib, f"runtime/{name}.py imports {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                top = (node.module or "").split(".")[0]
                assert top in stdlib or top == "__future__", f"runtime/{name}.py: {node.module}"
    assert set(WORKER_MODULES) <= set(MODULES)


def test_generated_sql_embeds_every_runtime_module():
    sql = schema.generate()
    for name in MODULES:
        assert f"'{name}', $wormhole_src$" in sql
