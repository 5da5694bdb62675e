"""The wormhole runtime: the code that runs next to the data.

Stdlib only. ``schema.py`` embeds these modules' source text into the database, so the same
code runs in plain CPython (tests), inside a PostgreSQL backend (plpython3u) and inside the
confined worker process. Nothing here imports ``plpy``: the host passes it in.
"""

#: the runtime version; the schema version is the same number.
VERSION = "0.1.0"

# Load order for the embedded copy (dependencies first). schema.py reads this list.
MODULES = (
    "errors",
    "rows",
    "jsonlite",
    "codec",
    "pgtypes",
    "sqltext",
    "rules",
    "policy",
    "namespace",
    "engine",
    "spi",
    "channel",
    "worker",
    "spawn",
    "sandbox",
    "host",
)
WORKER_MODULES = ("errors", "rows", "jsonlite", "codec", "rules", "policy", "namespace", "engine", "channel", "worker")
