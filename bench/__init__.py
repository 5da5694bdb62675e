"""wormhole's benchmark: ``python -m bench [--quick]`` (see bench/README.md)."""
