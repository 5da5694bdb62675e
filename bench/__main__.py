"""``python -m bench``: run from the repository root; works before ``pip install -e .`` too."""

import sys
from pathlib import Path

try:
    import wormhole  # noqa: F401
except ImportError:  # a fresh clone: use the source tree next to bench/
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bench.run import main

raise SystemExit(main())
