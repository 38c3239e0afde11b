"""One raw table (wide or long layout) -> wide rows: entity, timestamp and a float64 column per
metric, every cell validated."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pandas as pd

from ftml.config import ReadConfig
from ftml.errors import InputError
from ftml.io.contract import note_once
from ftml.io.entities import _entity_names, map_entities
from ftml.io.timestamps import _show, parse_timestamps

#: Column names found without an option, compared by :func:`column_key` (case, spaces, ``_``,
#: ``-`` and ``.`` do not count: ``PodName``, ``pod_name`` and ``Pod Name`` are one), the
#: earlier first.
TIMESTAMP_NAMES = ("timestamp", "time", "ts", "date", "datetime")
ENTITY_NAMES = ("entity", "host", "hostname", "instance", "pod", "podname", "service",
                "servicename", "container", "containername", "node", "nodename")
#: Failing those, a column whose key ends in one of these names the entity when it is the only
#: one (``kubernetes.pod.name``, ``agent.hostname``: exporters' dotted field names).
ENTITY_SUFFIXES = ("podname", "hostname", "servicename", "instancename", "containername",
                   "nodename")
DEFAULT_ENTITY = "default"
LONG_COLUMNS = ("metric", "value")


def column_key(name: object) -> str:
    """A column name as it is compared with the known names: lower case, letters and digits."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def find_column(columns, candidates: tuple[str, ...]):
    """The first of ``columns`` whose :func:`column_key` is a candidate's (in candidate order),
    or None."""
    keyed: dict[str, object] = {}
    for c in columns:
        keyed.setdefault(column_key(c), c)
    return next((keyed[n] for n in candidates if n in keyed), None)


def resolve_column(frame: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...],
                   what: str, source: str, option: str, required: bool,
                   suffixes: tuple[str, ...] = ()) -> str | None:
    if wanted:
        if wanted not in frame.columns:
            raise InputError(f"no column '{wanted}'", source=source,
                             hint=f"columns are {', '.join(map(str, frame.columns[:12]))}; "
                                  f"fix {option}")
        return wanted
    found = find_column(frame.columns, candidates)
    if found is not None:
        return found
    ending = [c for c in frame.columns if column_key(c).endswith(suffixes)] if suffixes else []
    if len(ending) == 1:
        note_once(f"ftml: note: {source}: {what} column {str(ending[0])!r} (by its name; "
                  f"{option} to choose another)")
        return ending[0]
    if len(ending) > 1:
        note_once(f"ftml: note: {source}: no {what} column chosen among "
                  f"{', '.join(repr(str(c)) for c in ending)}: every row is entity "
                  f"{DEFAULT_ENTITY!r}; pass {option}")
    if required:
        raise InputError(f"no {what} column", source=source,
                         hint=f"name it '{candidates[0]}' or pass {option}")
    return None


def to_rows(raw: pd.DataFrame, source: str, cfg: ReadConfig, row_offset: int = 0,
            text_columns: set[str] | None = None) -> pd.DataFrame:
    """One raw table (wide or long layout) -> wide rows: entity, timestamp, metric columns (float64).

    Not yet on a regular step: that is :func:`normalise`'s job, once all inputs are together.
    Long-layout rows that repeat an (entity, timestamp, metric) stay separate rows, so that
    :func:`normalise` averages every reading equally however the input was split into chunks.
    Entity names go through ``cfg.entity_map`` (:func:`map_entities`).

    ``text_columns``: a set to which wide-layout columns that hold text (not numbers with a
    typo: see :func:`is_text_column`) are added, and left out, instead of being an error
    (training drops them with a warning).
    """
    ts_col = resolve_column(raw, cfg.timestamp_col, TIMESTAMP_NAMES, "timestamp", source,
                            "--timestamp-col", required=True)
    ent_col = resolve_column(raw, cfg.entity_col, ENTITY_NAMES, "entity", source,
                             "--entity-col", required=False, suffixes=ENTITY_SUFFIXES)
    columns = {str(c).lower(): c for c in raw.columns}
    has_metric, has_value = "metric" in columns, "value" in columns
    excluded = set(cfg.exclude)
    long_layout = has_metric or has_value
    if long_layout and not (has_metric and has_value):
        have, lack = ("metric", "value") if has_metric else ("value", "metric")
        raise InputError(f"unknown layout: a '{have}' column but no '{lack}' column",
                         source=source, hint="long layout needs timestamp, entity, metric, "
                                             "value; wide layout one column per metric")
    if long_layout:
        metric_col, value_col = columns["metric"], columns["value"]
        extra = [c for c in raw.columns
                 if c not in (ts_col, ent_col, metric_col, value_col) and c not in excluded]
        if extra:
            raise InputError(f"unexpected column '{extra[0]}' in long layout", source=source,
                             hint=f"drop it or pass --exclude {extra[0]}")
        metric_cols = []
    else:
        metric_cols = [c for c in raw.columns
                       if c not in (ts_col, ent_col) and str(c) not in excluded]
        # A second column named as a timestamp is one (Nezha's Time beside TimeStamp), not a
        # metric: as a counter it would only say that the clock runs.
        clocks = [c for c in metric_cols if column_key(c) in TIMESTAMP_NAMES]
        if clocks:
            # Said once for all files (not per file): the same columns in each.
            note_once(f"ftml: note: left out {', '.join(repr(str(c)) for c in clocks)}, a second "
                      f"timestamp column: the time read is {str(ts_col)!r} (--timestamp-col "
                      "chooses; rename a metric so named)")
            metric_cols = [c for c in metric_cols if c not in clocks]
        if text_columns is not None:
            text = [c for c in metric_cols if is_text_column(raw[c])]
            text_columns.update(str(c) for c in text)
            metric_cols = [c for c in metric_cols if c not in text]
        if not metric_cols:
            raise InputError("no metric columns", source=source,
                             hint="add one numeric column per metric (wide layout) or "
                                  "metric and value columns (long layout)")
        _check_metric_names([str(c) for c in metric_cols], source)
    timestamps = _by_unique(raw[ts_col], lambda col, offset: parse_timestamps(
        col, source=source, column=str(ts_col), row_offset=offset), row_offset)
    entities = (_by_unique(raw[ent_col], lambda col, offset: _entity_names(
        col, source, str(ent_col), offset), row_offset)
                if ent_col is not None else pd.Series(DEFAULT_ENTITY, index=raw.index,
                                                      dtype="string"))
    entities = map_entities(entities, cfg.entity_map)
    if not long_layout:
        columns: dict[str, np.ndarray] = {}
        for c in metric_cols:  # a loop over columns, vectorized over rows
            columns[str(c)] = _numeric(raw[c], source, str(c), row_offset)
        # One float block, filled column by column (no second copy to consolidate it); kept
        # as pandas keeps blocks, a column per row of the transposed array.
        block = np.empty((len(columns), len(raw)))
        for j, col in enumerate(columns.values()):
            block[j] = col
        out = pd.DataFrame(block.T, columns=list(columns), index=pd.RangeIndex(len(raw)),
                           copy=False)
        # .array, not .to_numpy(): tz-aware times would become slow Timestamp objects.
        out.insert(0, "timestamp", timestamps.array)
        out.insert(0, "entity", entities.array)
        return out
    values = _numeric(raw[value_col], source, str(value_col), row_offset)
    names = raw[metric_col].astype("string").str.strip()
    empty = (names.isna() | (names == "")).to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise InputError("empty metric name", source=source,
                         where=f"row {row_offset + pos + 1}, column '{metric_col}'",
                         hint="name the metric of every row")
    _check_metric_names(pd.unique(names).tolist(), source)
    long = pd.DataFrame({"entity": entities.array, "timestamp": timestamps.array,
                         "metric": names.to_numpy(), "value": values})
    # Repeats of (entity, timestamp, metric) are numbered so the pivot keeps each one.
    long["repeat"] = long.groupby(["entity", "timestamp", "metric"], sort=False).cumcount()
    wide = long.set_index(["entity", "timestamp", "repeat", "metric"])["value"] \
        .unstack("metric")
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index().drop(columns="repeat")


def _check_metric_names(names: list[str], source: str) -> None:
    clash = [n for n in names if n in ("entity", "timestamp")]
    if clash:
        raise InputError(f"a metric is named '{clash[0]}', which ftml uses for its own column",
                         source=source, hint=f"rename it or pass --exclude {clash[0]}")


def _by_unique(col: pd.Series, parse: Callable[[pd.Series, int], pd.Series],
               row_offset: int) -> pd.Series:
    """``parse(col, row_offset)`` for a text column, computed on its distinct values only: a
    metrics file repeats each timestamp for every entity and each entity at every step. The
    parse is value by value, so the result is the same; any problem (a missing or unparseable
    value) is left to the full parse, whose error names the right row."""
    if len(col) < 1024 or not (pd.api.types.is_object_dtype(col.dtype) or
                               pd.api.types.is_string_dtype(col.dtype)):
        return parse(col, row_offset)
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    if len(uniques) * 4 > len(col) or (codes < 0).any():
        return parse(col, row_offset)
    try:
        parsed = parse(pd.Series(uniques), row_offset)
    except InputError:
        return parse(col, row_offset)
    return pd.Series(parsed.array.take(codes), index=col.index)


# A column is text, not a metric with a typo, when at least this share of its filled cells
# are not numbers.
TEXT_SHARE = 0.5


def is_text_column(col: pd.Series) -> bool:
    """A column of text (e.g. an interface name), not a number column with a stray word."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        return False
    text = col.dropna().astype("string").str.strip()
    text = text[(text != "") & ~text.str.lower().isin(_NAN_WORDS)]
    if not len(text):
        return False
    words = pd.to_numeric(text, errors="coerce").isna()
    return bool(words.mean() >= TEXT_SHARE)


def _numeric(col: pd.Series, source: str, name: str, row_offset: int) -> np.ndarray:
    """A metric column -> float64; text in it is an error naming the row. Empty cells, NaN-like
    words and infinities are missing values."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        out = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = col.astype("string").str.strip()
        num = pd.to_numeric(text, errors="coerce")
        bad = (num.isna() & text.notna() & (text != "") & ~text.str.lower().isin(_NAN_WORDS))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"text {_show(col.iloc[pos])} in a metric column", source=source,
                             where=f"row {row_offset + pos + 1}, column '{name}'",
                             hint=f"fix the value or pass --exclude {name} to drop the column")
        out = num.to_numpy(dtype=np.float64, na_value=np.nan)
    # An infinite reading is a broken one: missing, not a value to learn from.
    inf = np.isinf(out)
    return np.where(inf, np.nan, out) if inf.any() else out


_NAN_WORDS = ["nan", "na", "n/a", "null", "none", "-"]
