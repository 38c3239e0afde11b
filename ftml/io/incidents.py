"""Incident files (entity, start, end, cause) and the labels they give rows: which incident a
time of an entity falls in. (Grouping co-occurring events is :mod:`ftml.incidents`.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ftml.config import ReadConfig
from ftml.errors import InputError
from ftml.io.entities import _entity_names, map_entities
from ftml.io.rows import ENTITY_NAMES, find_column
from ftml.io.tables import read_table
from ftml.io.timestamps import parse_timestamps, to_ns

INCIDENT_COLUMNS = ("entity", "start", "end", "cause")


def read_incidents(path: str | Path, entities: list[str] | None = None,
                   cfg: ReadConfig | None = None) -> pd.DataFrame:
    """Incidents file -> frame ``entity, start, end, cause`` (UTC), sorted by entity, start.

    ``entities`` are those the metrics have: an incident for another entity is an error, and
    with exactly one the ``entity`` column may be left out.
    """
    source = str(path)
    raw = read_table(path, allow_empty=True)
    cols = {str(c).lower(): c for c in raw.columns}
    for need in ("start", "end", "cause"):
        if need not in cols:
            raise InputError(f"no '{need}' column", source=source,
                             hint="incidents need columns entity, start, end, cause")
    out = pd.DataFrame({
        "start": parse_timestamps(raw[cols["start"]], source=source,
                                  column=str(cols["start"])).array,
        "end": parse_timestamps(raw[cols["end"]], source=source,
                                column=str(cols["end"])).array,
        "cause": raw[cols["cause"]].astype("string").str.strip().to_numpy(),
    })
    empty_cause = (out["cause"].isna() | (out["cause"] == "")).to_numpy()
    if empty_cause.any():
        pos = int(np.flatnonzero(empty_cause)[0])
        raise InputError("empty cause", source=source,
                         where=f"row {pos + 1}, column '{cols['cause']}'",
                         hint="name the root cause of every incident")
    ent_col = (cfg.entity_col if cfg and cfg.entity_col in raw.columns else
               find_column(raw.columns, ENTITY_NAMES))
    if ent_col is not None:
        names = _entity_names(raw[ent_col], source, str(ent_col), 0)
        out.insert(0, "entity", map_entities(names, cfg.entity_map if cfg else None).to_numpy())
    elif entities is not None and len(entities) == 1:
        out.insert(0, "entity", str(entities[0]))
    else:
        hint = ("the metrics have several entities: say which one each incident is on"
                if entities else "add an 'entity' column")
        raise InputError("no 'entity' column", source=source, hint=hint)
    bad = (out["end"] < out["start"]).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputError(f"incident ends ({out['end'].iloc[pos]}) before it starts "
                         f"({out['start'].iloc[pos]})", source=source, where=f"row {pos + 1}",
                         hint="swap start and end")
    if entities is not None:
        known = set(map(str, entities))
        unknown = ~out["entity"].isin(known).to_numpy()
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            shown = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
            raise InputError(f"incident for entity '{out['entity'].iloc[pos]}' that has no metrics",
                             source=source, where=f"row {pos + 1}, column '{ent_col}'",
                             hint=f"the metrics have entities {shown}; fix the name or add "
                                  "its metrics")
    out["entity"] = out["entity"].astype(str)
    out["cause"] = out["cause"].astype(str)
    return out.sort_values(["entity", "start"], kind="stable").reset_index(drop=True)


def incident_spans(incidents: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Incidents -> {entity: array of [start_ns, end_ns]} (sorted by start)."""
    if incidents is None or incidents.empty:
        return {}
    out = {}
    for ent, grp in incidents.groupby("entity", sort=True):
        out[str(ent)] = np.column_stack([to_ns(grp["start"]), to_ns(grp["end"])])
    return out


def label_times(entity: np.ndarray, t_ns: np.ndarray, incidents: pd.DataFrame | None
                ) -> np.ndarray:
    """Index (into ``incidents``) of the incident each (entity, time) falls in, or -1."""
    label = np.full(len(t_ns), -1, dtype=np.int64)
    if incidents is None or incidents.empty:
        return label
    starts, ends = to_ns(incidents["start"]), to_ns(incidents["end"])
    for ent, idx in incidents.groupby("entity", sort=False).indices.items():  # per entity
        rows = np.flatnonzero(entity == ent)
        if rows.size == 0:
            continue
        t = t_ns[rows]
        for i in idx:  # incidents of one entity: few
            inside = (t >= starts[i]) & (t <= ends[i])
            label[rows[inside]] = i
    return label
