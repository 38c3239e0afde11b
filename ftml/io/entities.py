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


# Kubernetes names a pod of a Deployment <deployment>-<pod-template-hash>-<5 chars>, of a
# DaemonSet, Job or bare ReplicaSet <owner>-<5 chars>, of a CronJob <cronjob>-<minutes since
# the epoch>-<5 chars>. The 5 chars are utilrand.String(5) and the hash is
# rand.SafeEncodeString, both drawn from this alphabet (no vowels, no 0, 1 or 3, so that no
# word is spelt); hashes before Kubernetes 1.8 were decimal. A StatefulSet's pod is
# <name>-<ordinal>: a stable identity, which a suffix of digits alone never loses here.
_K8S_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_POD_OF_DEPLOYMENT = re.compile(
    rf"^(?P<stem>.+?)-(?:[{_K8S_SAFE}]{{6,10}}|[0-9]{{6,10}})-[{_K8S_SAFE}]{{5}}$")
# One generated suffix: 4 or more letters and digits, with at least one of each (a random
# hex or base-36 id: 7f3a9, x2k9q), or Kubernetes' 5 chars (which may hold no digit).
_GENERATED_SUFFIX = re.compile(
    rf"^(?P<stem>.+)-(?:(?=[a-z0-9]*[0-9])(?=[a-z0-9]*[a-z])[a-z0-9]{{4,}}"
    rf"|(?=[{_K8S_SAFE}]*[a-z])[{_K8S_SAFE}]{{5}})$")


def entity_stem(name: str) -> str:
    """The name without a trailing suffix that looks generated (a new one per deploy): the
    Kubernetes pod 'ts-order-service-5d8f7c9b4-x2k9q' -> 'ts-order-service', 'checkout-7f3a9'
    -> 'checkout', 'fluentd-x2kqb' -> 'fluentd'. A suffix of digits alone ('web-1', a
    StatefulSet's ordinal; 'node-2024') or a word ('redis-master') stays: the name is its
    own stem. Lower-case letters and digits only, as Kubernetes names are (RFC 1123)."""
    m = _POD_OF_DEPLOYMENT.match(name) or _GENERATED_SUFFIX.match(name)
    return m.group("stem") if m else name
