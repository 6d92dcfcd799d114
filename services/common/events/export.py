"""(Re)write the JSON Schemas of the care events under schemas/events/ from the pydantic models.

    python -m services.common.events.export            # write the files
    python -m services.common.events.export --check    # exit 1 when the checked-in files differ

One file per event type (``<type>.schema.json``, e.g. org.carebus.patient.registered.v1.schema.json) with one
worked example (services/common/events/examples.py), plus ``cloudevent.schema.json``: the envelope as the
discriminated union of all types. Output is stable (sorted keys, 2-space indent, trailing newline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from services.common.events.envelope import EVENT_TYPES, CareEvent
from services.common.events.examples import EXAMPLES
from services.common.settings import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas" / "events"
ENVELOPE_FILE = "cloudevent.schema.json"
SCHEMA_BASE = "urn:carebus:schema:events:"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render() -> dict[str, str]:
    """File name -> file text for every schema carebus publishes."""
    files: dict[str, str] = {}
    for event_type, cls in EVENT_TYPES.items():
        schema = cls.model_json_schema()
        schema["$schema"] = DIALECT
        schema["$id"] = f"{SCHEMA_BASE}{event_type}.schema.json"
        schema["examples"] = [EXAMPLES[event_type]]
        files[f"{event_type}.schema.json"] = _dump(schema)
    envelope = TypeAdapter(CareEvent).json_schema()
    envelope["$schema"] = DIALECT
    envelope["$id"] = f"{SCHEMA_BASE}{ENVELOPE_FILE}"
    envelope["title"] = "carebus care event (CloudEvents 1.0, structured JSON)"
    envelope["description"] = (
        "Any inbound carebus care event. `type` selects the payload schema; see the per-type files."
    )
    envelope["examples"] = [EXAMPLES["org.carebus.assessment.completed.v1"]]
    files[ENVELOPE_FILE] = _dump(envelope)
    return files


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    rendered = render()
    for name, text in rendered.items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in directory.glob("*.schema.json"):
        if stale.name not in rendered:
            stale.unlink()
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, stale or different from the models."""
    rendered = render()
    problems = []
    for name, text in rendered.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            problems.append(name)
    problems.extend(p.name for p in directory.glob("*.schema.json") if p.name not in rendered)
    return sorted(problems)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        differing = drift()
        for name in differing:
            print(f"drift: schemas/events/{name}")
        return 1 if differing else 0
    for path in write():
        print(f"wrote {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
