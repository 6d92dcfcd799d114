"""Which modules run compiled (mypyc C extensions, built by setup.py), and which compiled ones are stale.

Python imports ``x.cpython-311-...so`` in preference to ``x.py``: after an edit to a compiled module, the old
build keeps running until ``make`` rebuilds it. The test session refuses to start on a stale build
(tests/conftest.py) and each service logs how many compiled modules it runs.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

SERVICES_ROOT = Path(__file__).resolve().parent.parent


def _built_modules() -> list[tuple[Path, Path]]:
    """(extension, source) for every compiled module of the services package."""
    found = []
    for suffix in EXTENSION_SUFFIXES:
        for extension in SERVICES_ROOT.rglob(f"*{suffix}"):
            source = extension.with_name(extension.name[: -len(suffix)] + ".py")
            if source.exists():
                found.append((extension, source))
    return found


def compiled_modules() -> list[str]:
    """Dotted names of the modules that run compiled."""
    root = SERVICES_ROOT.parent
    return sorted(".".join(source.relative_to(root).with_suffix("").parts) for _ext, source in _built_modules())


def stale_compiled_modules() -> list[str]:
    """Compiled modules whose source changed after the build (the build, not the source, would run)."""
    root = SERVICES_ROOT.parent
    return sorted(
        str(source.relative_to(root))
        for extension, source in _built_modules()
        if source.stat().st_mtime > extension.stat().st_mtime
    )
