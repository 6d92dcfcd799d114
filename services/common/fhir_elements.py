"""Every element name the FHIR R4 (R4B models) defines, in any resource or data type.

An unknown element is named in a refusal only when its name is one of these (a FHIR word such as ``url`` put
in the wrong place); any other name is the sender's own text, which may be PHI, and is not repeated.
The list is ``r4_element_names.txt`` beside this module: `python -m services.common.fhir_elements`
rewrites it from fhir.resources, and a test fails when it drifts.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

NAMES_FILE = Path(__file__).with_name("r4_element_names.txt")


@cache
def r4_element_names() -> frozenset[str]:
    return frozenset(NAMES_FILE.read_text(encoding="utf-8").split())


def names_from_models() -> list[str]:
    """The element names of every R4B model (slow: imports them all)."""
    import fhir.resources.R4B as r4b
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

    names: set[str] = set()
    for info in pkgutil.iter_modules(r4b.__path__):
        if info.name.startswith(("tests", "fhirtypes")):
            continue
        module = importlib.import_module(f"fhir.resources.R4B.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, FHIRAbstractModel):
                names.update(field.alias or name for name, field in value.model_fields.items())
    return sorted(names)


if __name__ == "__main__":
    NAMES_FILE.write_text("\n".join(names_from_models()) + "\n", encoding="utf-8")
    print(f"wrote {NAMES_FILE}")
