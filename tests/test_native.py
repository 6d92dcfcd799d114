"""Which compiled modules are stale: edited after the build, or with their source moved away."""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from services.common import native


def test_a_build_older_than_its_source_or_without_one_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "services"
    package = root / "mapper"
    package.mkdir(parents=True)
    suffix = EXTENSION_SUFFIXES[0]
    for name in ("fresh", "edited"):
        (package / f"{name}.py").write_text("")
        (package / f"{name}{suffix}").write_bytes(b"")
    os.utime(package / f"edited{suffix}", (1, 1))  # built long before its source was edited
    (package / f"moved{suffix}").write_bytes(b"")  # its source went elsewhere
    monkeypatch.setattr(native, "SERVICES_ROOT", root)

    assert native.compiled_modules() == ["services.mapper.edited", "services.mapper.fresh"]
    assert native.stale_compiled_modules() == [
        "services/mapper/edited.py", f"services/mapper/moved{suffix} (its source is gone)"]
    native.remove_orphaned_extensions()
    assert not (package / f"moved{suffix}").exists()
    assert native.stale_compiled_modules() == ["services/mapper/edited.py"]
