"""``python -m services.common.fhir``: writes docs/security-labels.md, the table of the label rules (labels.RULES).

Not compiled (setup.py): a mypyc module cannot be run with ``python -m``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from services.common.fhir.labels import rules_table

DOC = Path(__file__).resolve().parents[3] / "docs" / "security-labels.md"

if __name__ == "__main__":
    DOC.write_text(rules_table())
    sys.stdout.write(f"wrote {DOC}\n")
