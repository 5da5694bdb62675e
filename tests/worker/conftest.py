"""Fixtures for the confined-worker tests: real bubblewrap, real worker, no database."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from worker_support import (  # noqa: E402,F401 - fixtures and the collection hook
    executor,
    pytest_collection_modifyitems,
    sources,
)
