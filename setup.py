"""Compiles the mapping hot path with mypyc (the typed Python below becomes C extension modules).

Everything else about the package is in pyproject.toml. The modules listed in COMPILED are plain, strictly typed
Python and run unchanged without compilation; compiled, the HL7 v2 and event mappings run about 1.5x faster
(benchmarks/). ``make`` builds them (``pip install -e .``); services.common.native reports which are in use.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mypyc.build import mypycify
from setuptools import setup

ROOT = Path(__file__).resolve().parent
HOT_PACKAGES = ("services/common/hl7v2", "services/mapper/hl7v2", "services/mapper/mapping", "services/common/fhir")
NOT_COMPILED = {
    "services/common/hl7v2/errors.py",  # exception classes with class-level defaults: kept as Python classes
    "services/common/fhir/__main__.py",  # writes a doc (python -m cannot run a compiled module)
}
COMPILED = [
    *sorted(str(path.relative_to(ROOT)) for package in HOT_PACKAGES for path in (ROOT / package).glob("*.py")
            if str(path.relative_to(ROOT)) not in NOT_COMPILED),
    "services/common/fhir_ids.py",
    "services/common/fhir_validation.py",  # every emitted resource through the R4B models (known shapes fast)
    "services/common/security_labels.py",
    "services/mapper/assembly.py",  # the Bundle + Provenance assembler all three paths share
    "services/mapper/instrument_resources.py",  # the scored-instrument builder all three paths share
    "services/mapper/result.py",  # the mappings' return types (plain dataclasses, built per event: docs/hot-path.md)
    "services/mapper/pipeline.py",  # one inbound record -> its outbound records, run once per event
]

# pip asks for the metadata first (egg_info / dist_info): no need to compile for that
METADATA_ONLY = bool({"egg_info", "dist_info"} & set(sys.argv[1:]))

# Strict typing is `make lint`'s job (with every dependency installed); here, a library missing from the build
# environment only makes its values Any, and must not stop the build.
LENIENT = ["--no-warn-unused-ignores", "--allow-subclassing-any", "--no-warn-return-any", "--allow-untyped-calls",
           "--allow-untyped-decorators"]

setup(ext_modules=[] if METADATA_ONLY else mypycify([*LENIENT, *COMPILED], opt_level="3", group_name="carebus_native"))
