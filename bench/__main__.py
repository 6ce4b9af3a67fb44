"""Run one benchmark: ``python -m bench NAME [ARGS...]`` runs ``bench.NAME.main(ARGS)``."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def _available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = _available()
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m bench NAME [ARGS...]\nbenchmarks: {', '.join(names)}")
        return 0
    name = argv[0]
    if name not in names:
        print(f"unknown benchmark {name!r}; choose one of: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
