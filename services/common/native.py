"""Which modules run compiled (mypyc C extensions, built by setup.py), and which compiled ones are stale.

Python imports ``x.cpython-311-...so`` in preference to ``x.py``: after an edit to a compiled module, the old
build keeps running until ``make`` rebuilds it. The test session refuses to start on a stale build
(tests/conftest.py) and each service logs how many compiled modules it runs.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

SERVICES_ROOT = Path(__file__).resolve().parent.parent


def _extensions() -> list[tuple[Path, Path]]:
    """(extension, the source it was built from) for every C extension below the services package."""
    suffixes = sorted(EXTENSION_SUFFIXES, key=len, reverse=True)  # ".cpython-311-...so" before ".so"
    found = []
    for extension in SERVICES_ROOT.rglob("*"):
        suffix = next((s for s in suffixes if extension.name.endswith(s)), None)
        if suffix is not None:
            found.append((extension, extension.with_name(extension.name[: -len(suffix)] + ".py")))
    return sorted(found)


def _built_modules() -> list[tuple[Path, Path]]:
    """(extension, source) for every compiled module of the services package."""
    return [(extension, source) for extension, source in _extensions() if source.exists()]


def orphaned_extensions() -> list[Path]:
    """Compiled modules whose source is gone (moved or deleted): Python would still import the old build under
    the old name, hiding the move. ``make`` deletes them before it rebuilds."""
    return [extension for extension, source in _extensions() if not source.exists()]


def remove_orphaned_extensions() -> None:
    for extension in orphaned_extensions():
        extension.unlink()


def compiled_modules() -> list[str]:
    """Dotted names of the modules that run compiled."""
    root = SERVICES_ROOT.parent
    return sorted(".".join(source.relative_to(root).with_suffix("").parts) for _ext, source in _built_modules())


def stale_compiled_modules() -> list[str]:
    """Compiled modules whose source changed after the build (the build, not the source, would run), and those
    whose source is gone."""
    root = SERVICES_ROOT.parent
    return sorted(
        [str(source.relative_to(root)) for extension, source in _built_modules()
         if source.stat().st_mtime > extension.stat().st_mtime]
        + [f"{extension.relative_to(root)} (its source is gone)" for extension in orphaned_extensions()]
    )
