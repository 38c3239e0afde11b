"""Entity names: the entity column as text, and ``--entity-map``'s regex to stable names."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ftml.errors import ConfigError, InputError


def _entity_names(col: pd.Series, source: str, name: str, row_offset: int) -> pd.Series:
    """Entity column -> names as text; 7 and 7.0 both become '7' (a CSV column with a blank
    cell is read as floats)."""
    if pd.api.types.is_float_dtype(col.dtype):
        whole = col.dropna()
        if (whole == np.floor(whole)).all():
            col = col.astype("Int64")
    names = col.astype("string").str.strip()
    empty = (names.isna() | (names == "")).to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise InputError("empty entity", source=source,
                         where=f"row {row_offset + pos + 1}, column '{name}'",
                         hint="name the entity of every row")
    return names


def entity_pattern(pattern: str) -> re.Pattern:
    """The compiled ``--entity-map`` regex: it must have a group named ``entity`` or exactly
    one capture group, which is the stable name."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"entity map {pattern!r} is not a regular expression ({exc})",
                          where="--entity-map / read.entity_map",
                          hint="e.g. '^(.+?)-[0-9a-f]{6,10}-[0-9a-z]{5}$'") from None
    if "entity" not in rx.groupindex and rx.groups != 1:
        raise ConfigError(f"entity map {pattern!r} has {rx.groups} capture groups",
                          where="--entity-map / read.entity_map",
                          hint="use one group, or name the stable part (?P<entity>...)")
    return rx


def map_entities(names: pd.Series, pattern: str | None) -> pd.Series:
    """Entity names -> stable names by ``pattern`` (``read.entity_map``): a name the regex
    matches (``re.search``) becomes its ``entity`` group (or its one group), e.g. the pod
    'ts-order-service-5d8f9c7b6-x2x4z' -> 'ts-order-service'; other names stay as they are.
    Rows of entities merged at one time step are averaged by :func:`normalise`. Computed on
    the distinct names only."""
    if not pattern or len(names) == 0:
        return names
    rx = entity_pattern(pattern)
    group = "entity" if "entity" in rx.groupindex else 1
    codes, uniques = pd.factorize(names, use_na_sentinel=True)
    mapped = []
    for name in map(str, uniques):  # distinct names: few
        m = rx.search(name)
        stable = m.group(group) if m else None
        mapped.append(stable if stable else name)
    return pd.Series(pd.array(mapped, dtype="string").take(codes), index=names.index)
