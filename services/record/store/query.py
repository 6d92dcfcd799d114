# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""Queries over the current rows and the versions: search (token, string, date, id and patient criteria),
$everything, history and the bulk read by code, each as one page of what the caller's view may see, the visible
total, and how many rows were withheld (by class). The view's clearance is applied in SQL (:func:`_visibility`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from services.common.disclosure import ALL_CLASSES, ORDINARY
from services.common.sql import Connection, Database, chunks, marks
from services.record.indexing import normalize_text
from services.record.search import (
    Criterion,
    DateCriterion,
    IdCriterion,
    PatientCriterion,
    SearchQuery,
    StringCriterion,
    TokenCriterion,
)
from services.record.store import identity
from services.record.store.base import EverythingQuery, HistoryQuery, Page, StoredRow, View
from services.record.store.versions import C_ROW, ROW, stored_row

TWO_PHASE_PAGE = 100  # SQLite: pages larger than this sort rowids, then fetch the rows


class _Where:
    """A WHERE clause and its parameters, built up condition by condition."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, sql: str, *params: Any) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "1=1"


_DATE_SQL = {
    "eq": "({s} >= ? AND {e} <= ?)",
    "ne": "NOT ({s} >= ? AND {e} <= ?)",
    "gt": "{e} > ?",
    "lt": "{s} < ?",
    "ge": "{e} >= ?",
    "le": "{s} <= ?",
    "sa": "{s} > ?",
    "eb": "{e} < ?",
}


def _date_params(prefix: str, start: int, end: int) -> tuple[int, ...]:
    match prefix:
        case "eq" | "ne":
            return start, end
        case "gt" | "le" | "sa":
            return (end,)
        case _:  # lt, ge, eb
            return (start,)


_ORDER = {
    None: "c.id ASC",
    "_id": "c.id ASC",
    "-_id": "c.id DESC",
    "date": "c.clinical_time ASC NULLS LAST, c.id ASC",
    "-date": "c.clinical_time DESC NULLS LAST, c.id ASC",
    "_lastUpdated": "c.last_updated ASC, c.id ASC",
    "-_lastUpdated": "c.last_updated DESC, c.id ASC",
}


def history(db: Database, query: HistoryQuery, view: View) -> Page:
    where = _Where()
    where.add("c.resource_type = ?", query.resource_type)
    if query.resource_id is not None:
        where.add("c.id = ?", query.resource_id)
    if query.since is not None:
        where.add("c.last_updated >= ?", query.since)
    with db.connection() as conn:
        return page(
            db, conn,
            "resource_version",
            where,
            view,
            "c.last_updated DESC, c.id ASC, c.version_id DESC",
            query.count,
            query.offset,
        )


def everything(db: Database, query: EverythingQuery, view: View) -> Page:
    if query.types is not None and not query.types:
        return Page([], 0)
    where = _Where()
    refs = sorted(query.patient_refs)
    where.add(f"c.patient_ref IN ({marks(len(refs))})", *refs)
    where.add("c.deleted = 0")
    if query.types is not None:
        types = sorted(query.types)
        where.add(f"c.resource_type IN ({marks(len(types))})", *types)
    if query.since is not None:
        where.add("c.last_updated >= ?", query.since)
    with db.connection() as conn:
        return page(
            db, conn,
            "resource_current",
            where,
            view,
            "c.clinical_time ASC NULLS FIRST, c.resource_type ASC, c.id ASC",
            query.count,
            query.offset,
        )


def current_with_token(db: Database, resource_type: str, param: str, codes: Sequence[str]
                       ) -> list[tuple[str, StoredRow]]:
    """Bulk read for whole-population work (outcomes, measures): every current, undeleted ``resource_type``
    with one of ``codes`` under token ``param``, each with the person it belongs to (the person id of its
    patient, or the patient reference itself when it is linked to nobody). No paging, no view: callers apply
    their own access rules."""
    if not codes:
        return []
    sql = (
        f"SELECT COALESCE(m.person_id, c.patient_ref, ''), {C_ROW} FROM resource_current c "
        "LEFT JOIN identity_member m ON m.patient_ref = c.patient_ref "
        "WHERE c.resource_type = ? AND c.deleted = 0 AND EXISTS (SELECT 1 FROM search_token t "
        "WHERE t.resource_type = c.resource_type AND t.id = c.id AND t.param = ? "
        f"AND t.code IN ({marks(len(codes))}))"
    )
    with db.connection() as conn:
        rows = db.all(conn, sql, (resource_type, param, *codes))
    return [(r[0], stored_row(r[1:])) for r in rows]


def search(db: Database, query: SearchQuery, view: View) -> Page:
    where = _Where()
    where.add("c.resource_type = ?", query.resource_type)
    where.add("c.deleted = 0")
    with db.connection() as conn:
        patients: set[str] | None = None  # the patients every patient= criterion allows
        for criterion in query.criteria:
            if isinstance(criterion, PatientCriterion):
                refs: set[str] = set()
                for ref in criterion.patient_refs:
                    refs.update(identity.members_of(db, conn, ref))
                patients = refs if patients is None else patients & refs
        if view.compartment is not None:
            patients = set(view.compartment) if patients is None else patients & view.compartment
        if patients is not None and not patients:
            return Page([], 0)
        for criterion in query.criteria:
            _criterion(where, criterion, patients)
        return page(db, conn, "resource_current", where, view, _ORDER[query.sort], query.count, query.offset)


def page(db: Database, conn: Connection, table: str, where: _Where, view: View, order: str, count: int, offset: int
) -> Page:
    """One page of visible matches, the visible total and what was withheld. A caller who may see everything
    and gets a complete first page needs no count; every other answer runs the same statements whether or not
    anything is withheld - the page, then one count grouped by patient and restriction that gives the total, the
    withheld counts and the patients whose matches were withheld - so neither the number of statements nor their
    shape tells an uncleared caller that a withheld match exists. A view limited to no patient sees nothing."""
    if not _view(where, view):
        return Page([], 0)
    rows: list[StoredRow] = []
    condition, visible_params = _visibility(view)
    visible = f"({where.sql()}) AND {condition}"
    params = (*where.params, *visible_params, count, offset)
    if count > TWO_PHASE_PAGE and db.dialect.rowid:
        # SQLite sorts whole rows (bodies included) in its temp B-tree: sort the rowids, then fetch the rows
        ids = [
            r[0]
            for r in db.all(
                conn, f"SELECT c.rowid FROM {table} c WHERE {visible} ORDER BY {order} LIMIT ? OFFSET ?", params
            )
        ]
        rows = rows_by_rowid(db, conn, table, ids)
    elif count > 0:
        rows = [
            stored_row(r)
            for r in db.all(
                conn, f"SELECT {C_ROW} FROM {table} c WHERE {visible} ORDER BY {order} LIMIT ? OFFSET ?", params
            )
        ]
    complete = count > 0 and offset == 0 and len(rows) < count
    if complete and view.granted == EVERYTHING and not view.by_patient:
        return Page(rows, len(rows))
    total = 0
    withheld: dict[int, int] = {}
    denied: set[str] = set()
    groups = db.all(
        conn,
        f"SELECT c.patient_ref, c.restriction, COUNT(*) FROM {table} c WHERE {where.sql()} "
        "GROUP BY c.patient_ref, c.restriction",
        where.params,
    )
    for patient_ref, restriction, n in groups:
        missing = _missing(int(restriction), view.mask_of(patient_ref))
        if missing:
            withheld[missing] = withheld.get(missing, 0) + int(n)
            if patient_ref is not None:
                denied.add(patient_ref)
        else:
            total += int(n)
    return Page(rows, total, withheld, tuple(sorted(denied)))


def rows_by_rowid(db: Database, conn: Connection, table: str, ids: Sequence[int]) -> list[StoredRow]:
    """The rows of ``ids`` in the order given (a row deleted in between is left out)."""
    found: dict[int, StoredRow] = {}
    for chunk in chunks(ids):
        for r in db.all(conn, f"SELECT rowid, {ROW} FROM {table} WHERE rowid IN ({marks(len(chunk))})", chunk):
            found[r[0]] = stored_row(r[1:])
    return [found[i] for i in ids if i in found]


def _view(where: _Where, view: View, prefix: str = "c.") -> bool:
    """Adds the compartment condition; False when the view can see nothing at all."""
    if view.compartment is not None:
        if not view.compartment:
            return False
        refs = sorted(view.compartment)
        where.add(f"{prefix}patient_ref IN ({marks(len(refs))})", *refs)
    return True


def _criterion(where: _Where, criterion: Criterion, patients: set[str] | None) -> None:
    """Adds one AND-ed criterion. ``patients``: the patient references the search is limited to, if any."""
    if isinstance(criterion, IdCriterion):
        where.add(f"c.id IN ({marks(len(criterion.ids))})", *criterion.ids)
    elif isinstance(criterion, PatientCriterion):
        assert patients is not None
        ordered = sorted(patients)
        where.add(f"c.patient_ref IN ({marks(len(ordered))})", *ordered)
    elif isinstance(criterion, TokenCriterion):
        ors: list[str] = []
        params: list[Any] = [criterion.param]
        for system, code in criterion.values:
            if code is not None and system is not None:
                ors.append("(t.code = ? AND t.system = ?)")
                params.extend((code, system))
            elif code is not None:
                ors.append("t.code = ?")
                params.append(code)
            elif system is not None:
                ors.append("t.system = ?")
                params.append(system)
        scope = ""
        if patients is not None:
            ordered = sorted(patients)
            scope = f"AND t.patient_ref IN ({marks(len(ordered))}) "
            params.extend(ordered)
        where.add(
            "EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = c.resource_type "
            f"AND t.id = c.id AND t.param = ? AND ({' OR '.join(ors)}) {scope})",
            *params,
        )
    elif isinstance(criterion, StringCriterion):
        ors = []
        params = [criterion.param + (":exact" if criterion.mode == "exact" else "")]
        for value in criterion.values:
            if criterion.mode == "exact":
                ors.append("s.value = ?")
                params.append(value)
            elif criterion.mode == "contains":
                escaped = normalize_text(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                ors.append("s.value LIKE ? ESCAPE '\\'")
                params.append(f"%{escaped}%")
            else:
                prefix = normalize_text(value)
                ors.append("(s.value >= ? AND s.value < ?)")
                params.extend((prefix, prefix + "\U0010ffff"))
        where.add(
            "EXISTS (SELECT 1 FROM search_string s WHERE s.resource_type = c.resource_type "
            f"AND s.id = c.id AND s.param = ? AND ({' OR '.join(ors)}))",
            *params,
        )
    elif isinstance(criterion, DateCriterion):
        if criterion.param == "_lastUpdated":
            start_col = end_col = "c.last_updated"
        else:
            start_col, end_col = "c.date_start", "c.date_end"
            where.add("c.date_start IS NOT NULL")
        ors = []
        params = []
        for prefix, start, end in criterion.clauses:
            ors.append(_DATE_SQL[prefix].format(s=start_col, e=end_col))
            params.extend(_date_params(prefix, start, end))
        where.add(f"({' OR '.join(ors)})", *params)

EVERYTHING = ALL_CLASSES | ORDINARY


def _missing(restriction: int, mask: int) -> int:
    """The classes of a row the mask does not permit (ORDINARY: an unlabelled row that may not go)."""
    if restriction == 0:
        return 0 if mask & ORDINARY else ORDINARY
    return restriction & ~mask


def _mask_sql(mask: int) -> tuple[str, tuple[int, ...]]:
    if mask & ORDINARY:
        return "(c.restriction | ?) = ?", (mask, mask)
    return "((c.restriction | ?) = ? AND c.restriction <> 0)", (mask, mask)


def _visibility(view: View) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition (and its parameters) for the rows ``view`` may see: one clause per distinct per-patient
    mask, and one for every other row."""
    if not view.by_patient:
        return _mask_sql(view.granted)
    clauses: list[str] = []
    params: list[Any] = []
    by_mask: dict[int, list[str]] = defaultdict(list)
    for ref, mask in sorted(view.by_patient.items()):
        by_mask[mask].append(ref)
    for mask, refs in sorted(by_mask.items()):
        sql, mask_params = _mask_sql(mask)
        clauses.append(f"(c.patient_ref IN ({marks(len(refs))}) AND {sql})")
        params.extend((*refs, *mask_params))
    listed = sorted(view.by_patient)
    sql, mask_params = _mask_sql(view.granted)
    clauses.append(f"((c.patient_ref IS NULL OR c.patient_ref NOT IN ({marks(len(listed))})) AND {sql})")
    params.extend((*listed, *mask_params))
    return "(" + " OR ".join(clauses) + ")", tuple(params)
