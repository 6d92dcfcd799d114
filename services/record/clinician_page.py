"""The clinician's page (pure HTML rendering, no JavaScript, no external assets): one patient's scores over time
with severity bands (inline SVG), outcome state, open safety Tasks, therapy sessions by modality, medication
starts and dose changes, diagnoses; and the clinic view of open safety Tasks and overdue follow-ups.

Input is what the caller may see (the API already applied tokens, labels and compartments); nothing here
mentions what was withheld. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from html import escape
from typing import Any, Final

from services.common.fhir.codesystems import CPT, SNOMED
from services.outcomes.episodes import Instrument, PersonOutcomes
from services.outcomes.fhir import STATE_DISPLAY
from services.outcomes.history import CSSRS_RISK, GAD7_TOTAL, PHQ9_TOTAL, clinical_date, loinc_codes

CHART_W: Final = 760
CHART_H: Final = 150
PAD_L: Final = 44
PAD_R: Final = 12
PAD_Y: Final = 10


@dataclass(frozen=True)
class Band:
    label: str
    low: float
    high: float
    colour: str


@dataclass(frozen=True)
class ChartSpec:
    key: str
    title: str
    top: float
    bands: tuple[Band, ...]


CHARTS: Final = (
    ChartSpec("phq-9", "PHQ-9 (depression)", 27, (
        Band("minimal 0-4", 0, 4.5, "#e8f5e9"), Band("mild 5-9", 4.5, 9.5, "#f1f8e9"),
        Band("moderate 10-14", 9.5, 14.5, "#fff8e1"), Band("moderately severe 15-19", 14.5, 19.5, "#ffe0b2"),
        Band("severe 20-27", 19.5, 27, "#ffcdd2"))),
    ChartSpec("gad-7", "GAD-7 (anxiety)", 21, (
        Band("minimal 0-4", 0, 4.5, "#e8f5e9"), Band("mild 5-9", 4.5, 9.5, "#f1f8e9"),
        Band("moderate 10-14", 9.5, 14.5, "#fff8e1"), Band("severe 15-21", 14.5, 21, "#ffcdd2"))),
    ChartSpec("c-ssrs", "C-SSRS screener (suicide risk)", 3, (
        Band("none", 0, 0.5, "#e8f5e9"), Band("low", 0.5, 1.5, "#fff8e1"),
        Band("moderate", 1.5, 2.5, "#ffe0b2"), Band("high", 2.5, 3, "#ffcdd2"))),
)
CSSRS_LEVELS: Final = {"none": 0, "low": 1, "moderate": 2, "high": 3}
# What the page lists as a therapy session: a psychotherapy Procedure (SNOMED CT psychotherapy regimes, as the
# session.completed mapping codes the modality: services/mapper/mapping/session.py; a CPT psychotherapy code) or
# an Encounter typed with a CPT psychotherapy code (a session recorded without its modality). Any other
# Procedure (hospice care, a lab draw, ECT) or visit is not a therapy session.
PSYCHOTHERAPY: Final = frozenset(
    {(SNOMED, c) for c in ("75516001", "304891004", "228557008", "314034001", "443730003", "449030000",
                           "401157001")}
    # CPT psychotherapy: individual 30/45/60 min (alone or with an E/M visit), crisis, psychoanalysis, family,
    # multiple-family group, group
    | {(CPT, c) for c in ("90832", "90833", "90834", "90836", "90837", "90838", "90839", "90840", "90845", "90846",
                          "90847", "90849", "90853")})
_NOT_A_SESSION: Final = frozenset({"planned", "cancelled", "entered-in-error", "not-done", "preparation"})
OPEN_TASK: Final = frozenset({"requested", "received", "accepted", "in-progress", "on-hold"})

_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1a1a1a;max-width:980px}
h1{font-size:1.4em;margin-bottom:4px} h2{font-size:1.1em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #eee}
.state{display:inline-block;padding:2px 8px;border-radius:10px;background:#e3f2fd;margin-right:6px}
.overdue{background:#ffcdd2} .task-stat{color:#b71c1c;font-weight:bold} .muted{color:#666}
svg text{font-size:10px;fill:#444}
"""


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or ():
        if coding.get("display"):
            return str(coding["display"])
        if coding.get("code"):
            return str(coding["code"])
    return ""


@dataclass(frozen=True)
class Point:
    when: date
    value: float
    label: str


def chart_points(resources: Iterable[dict[str, Any]]) -> dict[str, list[Point]]:
    points: dict[str, list[Point]] = {c.key: [] for c in CHARTS}
    for r in resources:
        if r.get("resourceType") != "Observation":
            continue
        codes = loinc_codes(r)
        when = clinical_date(r)
        if when is None:
            continue
        value = (r.get("valueQuantity") or {}).get("value")
        if PHQ9_TOTAL in codes and isinstance(value, int | float):
            points["phq-9"].append(Point(when, float(value), f"PHQ-9 {value:g} on {when}"))
        elif GAD7_TOTAL in codes and isinstance(value, int | float):
            points["gad-7"].append(Point(when, float(value), f"GAD-7 {value:g} on {when}"))
        elif CSSRS_RISK in codes:
            level = next((c.get("code") for c in (r.get("valueCodeableConcept") or {}).get("coding", ())), None)
            if level in CSSRS_LEVELS:
                points["c-ssrs"].append(Point(when, CSSRS_LEVELS[level], f"C-SSRS {level} risk on {when}"))
    for values in points.values():
        values.sort(key=lambda p: (p.when, p.value))
    return points


def _svg(spec: ChartSpec, points: Sequence[Point], first: date, last: date) -> str:
    span = max(1, (last - first).days)
    inner_w, inner_h = CHART_W - PAD_L - PAD_R, CHART_H - 2 * PAD_Y

    def x(day: date) -> float:
        return PAD_L + inner_w * (day - first).days / span

    def y(value: float) -> float:
        return PAD_Y + inner_h * (1 - value / spec.top)

    parts = [f'<svg class="chart" data-instrument="{spec.key}" width="{CHART_W}" height="{CHART_H}" '
             f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{escape(spec.title)}">']
    for band in spec.bands:
        top, bottom = y(band.high), y(band.low)
        parts.append(f'<rect class="band" data-band="{escape(band.label)}" x="{PAD_L}" y="{top:.1f}" '
                     f'width="{inner_w}" height="{bottom - top:.1f}" fill="{band.colour}"><title>'
                     f'{escape(band.label)}</title></rect>')
        parts.append(f'<text x="2" y="{(top + bottom) / 2 + 3:.1f}">{escape(band.label.split(" ")[0])}</text>')
    if len(points) > 1:
        line = " ".join(f"{x(p.when):.1f},{y(p.value):.1f}" for p in points)
        parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{line}"/>')
    for p in points:
        parts.append(f'<circle class="point" data-value="{p.value:g}" data-date="{p.when}" cx="{x(p.when):.1f}" '
                     f'cy="{y(p.value):.1f}" r="4" fill="#0d47a1"><title>{escape(p.label)}</title></circle>')
    parts.append(f'<text x="{PAD_L}" y="{CHART_H - 1}">{first}</text>'
                 f'<text x="{CHART_W - PAD_R - 60}" y="{CHART_H - 1}">{last}</text></svg>')
    return "".join(parts)


def _rows(headers: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _dose(dosage: dict[str, Any]) -> str:
    if dosage.get("text"):
        return str(dosage["text"])
    for rate in dosage.get("doseAndRate") or ():
        quantity = rate.get("doseQuantity") or {}
        if "value" in quantity:
            return f"{quantity['value']:g} {quantity.get('unit', '')}".strip()
    return ""


def _when(resource: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = resource.get(key)
        if isinstance(value, str):
            return value[:10]
        if isinstance(value, dict) and isinstance(value.get("start"), str):
            return str(value["start"])[:10]
    return ""


def _outcome_html(outcomes: PersonOutcomes) -> str:
    items = []
    instruments: tuple[Instrument, ...] = ("phq-9", "gad-7")
    for instrument in instruments:
        episode = outcomes.current(instrument)
        if episode is None:
            continue
        label = STATE_DISPLAY[episode.state] if episode.running else f"{STATE_DISPLAY[episode.state]} (episode ended)"
        overdue = (' <span class="state overdue" data-outcome="follow-up-overdue">follow-up overdue since '
                   f'{escape(str(episode.follow_up_due))}</span>') if episode.follow_up_overdue else ""
        items.append(f'<li><span class="state" data-outcome="{episode.state}">{escape(instrument.upper())}: '
                     f'{escape(label)}</span> index {episode.index.total} on {episode.index.when}, latest '
                     f'{episode.latest.total} on {episode.latest.when}{overdue}</li>')
    return "<ul>" + "".join(items) + "</ul>" if items else '<p class="muted">No elevated score: no episode.</p>'


def _psychotherapy(*concepts: Any) -> bool:
    return any((c.get("system"), c.get("code")) in PSYCHOTHERAPY for concept in concepts if isinstance(concept, dict)
               for c in concept.get("coding") or () if isinstance(c, dict))


def therapy_sessions(resources: Iterable[dict[str, Any]]) -> list[list[str]]:
    """(date, modality, status) of each psychotherapy session, by date: a psychotherapy Procedure (its code
    names the modality), else its session's Encounter when the record holds no such Procedure for it (modality
    "not recorded"). Planned, cancelled, not-done and entered-in-error ones are not sessions."""
    happened = [r for r in resources if r.get("status") not in _NOT_A_SESSION]
    procedures = [r for r in happened if r.get("resourceType") == "Procedure" and _psychotherapy(r.get("code"))]
    covered = {str((r.get("encounter") or {}).get("reference", "")) for r in procedures}
    encounters = [r for r in happened if r.get("resourceType") == "Encounter" and _psychotherapy(*r.get("type") or ())
                  and f"Encounter/{r.get('id')}" not in covered]
    rows = [[_when(r, "performedDateTime", "performedPeriod"), _text(r.get("code")), str(r.get("status", ""))]
            for r in procedures]
    rows += [[_when(r, "period"), "not recorded", str(r.get("status", ""))] for r in encounters]
    return sorted(rows)


def patient_page(patient: dict[str, Any], resources: Sequence[dict[str, Any]], outcomes: PersonOutcomes,
                 today: date) -> str:
    name: dict[str, Any] = next(iter(patient.get("name") or ()), {})
    display = " ".join([*name.get("given", []), name.get("family", "")]).strip() or f"Patient {patient.get('id')}"
    points = chart_points(resources)
    dates = [p.when for values in points.values() for p in values]
    first, last = (min(dates), max(max(dates), today)) if dates else (today, today)
    charts = "".join(f"<h3>{escape(spec.title)}</h3>{_svg(spec, points[spec.key], first, last)}" for spec in CHARTS)
    tasks = [r for r in resources if r.get("resourceType") == "Task" and r.get("status") in OPEN_TASK]
    task_rows = [[r.get("priority", ""), str(r.get("status")), str(r.get("description", "")),
                  str((r.get("owner") or {}).get("reference", "")),
                  str(((r.get("restriction") or {}).get("period") or {}).get("end", ""))] for r in tasks]
    session_rows = therapy_sessions(resources)
    meds = [r for r in resources if r.get("resourceType") == "MedicationRequest"]
    med_rows = [[_when(r, "authoredOn"), _text(r.get("medicationCodeableConcept")),
                 "dose change" if r.get("priorPrescription") else "start",
                 "; ".join(_dose(d) for d in r.get("dosageInstruction") or ()),
                 str(r.get("status", ""))] for r in meds]
    conditions = [r for r in resources if r.get("resourceType") == "Condition"]
    condition_rows = [[_when(r, "onsetDateTime", "recordedDate"), _text(r.get("code")),
                       _text(r.get("clinicalStatus"))] for r in conditions]
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(display)} - carebus</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(display)}</h1><p class=\"muted\">born {escape(str(patient.get('birthDate', '?')))} - "
        f"record as of {today}</p>"
        f"<h2>Open safety tasks</h2><div id=\"tasks\">"
        f"{_rows(['priority', 'status', 'what', 'owner', 'due'], task_rows, 'No open safety task.')}</div>"
        f"<h2>Outcome</h2><div id=\"outcome\">{_outcome_html(outcomes)}</div>"
        f"<h2>Scores over time</h2><div id=\"charts\">{charts}</div>"
        f"<h2>Therapy sessions</h2><div id=\"sessions\">"
        f"{_rows(['date', 'modality', 'status'], session_rows, 'No therapy session.')}</div>"
        f"<h2>Medications</h2><div id=\"medications\">"
        f"{_rows(['date', 'medication', 'kind', 'dose', 'status'], sorted(med_rows), 'No medication.')}</div>"
        f"<h2>Diagnoses</h2><div id=\"diagnoses\">"
        f"{_rows(['since', 'diagnosis', 'status'], sorted(condition_rows), 'No diagnosis.')}</div>"
        "</body></html>"
    )


def clinic_page(tasks: Sequence[dict[str, Any]], overdue: Sequence[tuple[str, str, str]], today: date) -> str:
    """``overdue``: (patient reference, instrument, due date) of episodes whose follow-up is overdue."""
    task_rows = [[str(t.get("priority", "")), str(t.get("status", "")), str(t.get("description", "")),
                  str((t.get("for") or {}).get("reference", "")), str((t.get("owner") or {}).get("reference", "")),
                  str(((t.get("restriction") or {}).get("period") or {}).get("end", ""))] for t in tasks]
    task_rows.sort(key=lambda r: r[5])
    links = "".join(f'<tr><td><a href="/{escape(ref)}">{escape(ref)}</a></td><td>{escape(instrument)}</td>'
                    f"<td>{escape(due)}</td></tr>" for ref, instrument, due in overdue)
    overdue_html = (f"<table><thead><tr><th>patient</th><th>instrument</th><th>due since</th></tr></thead>"
                    f"<tbody>{links}</tbody></table>") if overdue else '<p class="muted">No overdue follow-up.</p>'
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Clinic - carebus</title>"
        f"<style>{_STYLE}</style></head><body><h1>Clinic view</h1><p class=\"muted\">as of {today}</p>"
        "<h2>Open safety tasks</h2><div id=\"tasks\">"
        f"{_rows(['priority', 'status', 'what', 'patient', 'owner', 'due'], task_rows, 'No open safety task.')}"
        f"</div><h2>Overdue follow-ups</h2><div id=\"overdue\">{overdue_html}</div></body></html>"
    )
