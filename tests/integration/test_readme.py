"""The README's Python examples run as written, top-down (only the DSN is replaced)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

import wormhole
from wormhole.demo import DEMO_SQL

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
PREAMBLE = (
    "import psycopg\n"
    "from wormhole import remote, query, set_connection, transaction\n"
)


@pytest.fixture
def readme_db(db):
    db.setup_sql(DEMO_SQL + "CREATE TABLE accounts (id int PRIMARY KEY, balance int);"
                 "INSERT INTO accounts VALUES (1, 1000), (2, 1000);")
    return db


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(readme_db, tmp_path, index):
    # the README reads top-down: a block may use what earlier blocks defined
    code = "\n".join(BLOCKS[: index + 1]).replace(
        'psycopg.connect("dbname=mydb user=myuser")',
        f'psycopg.connect("{readme_db.dsn()}", autocommit=True)',
    )
    if "set_connection(" not in code:
        code = f'set_connection(psycopg.connect("{readme_db.dsn()}", autocommit=True))\n' + code
    path = tmp_path / f"readme_example_{index}.py"
    path.write_text(PREAMBLE + code)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        conn = wormhole.api._default
        wormhole.set_connection(None)
        if conn is not None:
            conn.close()
