"""Call graphs: who calls whom (``--topology FILE``, ``diagnose.topology``), read from an edge
list or an adjacency matrix, and the hops between entities that grouping and ranking read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.errors import InputError

#: Events of entities at most this many call-graph hops apart may join one group.
MAX_HOPS = 2


@dataclass(frozen=True)
class Topology:
    """A call graph: ``source`` calls ``target`` (edges, both arrays of entity names)."""

    source: np.ndarray
    target: np.ndarray
    weight: np.ndarray

    @property
    def nodes(self) -> list[str]:
        return sorted(set(self.source.tolist()) | set(self.target.tolist()))

    @classmethod
    def from_edges(cls, edges: list[tuple[str, str]] | pd.DataFrame) -> Topology:
        frame = pd.DataFrame(edges).iloc[:, :3] if len(edges) else pd.DataFrame([[], []]).T
        src = frame.iloc[:, 0].astype(str).to_numpy(dtype=object)
        dst = frame.iloc[:, 1].astype(str).to_numpy(dtype=object)
        w = (pd.to_numeric(frame.iloc[:, 2], errors="coerce").fillna(1.0).to_numpy(float)
             if frame.shape[1] > 2 else np.ones(len(src)))
        keep = src != dst
        return cls(src[keep], dst[keep], w[keep])


def load_topology(path: str | Path | None) -> Topology | None:
    """A call graph from CSV: an edge list ``source,target[,weight]`` (a header row is optional)
    or a square adjacency matrix (first header cell empty, row = caller, column = callee,
    non-zero = a call), as Nezha's ``dependency.csv`` and PetShop's ``graph.csv`` are."""
    if path is None:
        return None
    source = str(path)
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise InputError("topology file not found", source=source,
                         hint="give a CSV of source,target[,weight] call edges") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read topology: {str(exc).splitlines()[0]}",
                         source=source, hint="a CSV of source,target[,weight] rows") from None
    if frame.shape[1] < 2 or frame.empty:
        raise InputError("a topology needs two columns (source, target)", source=source,
                         hint="rows like 'frontend,cartservice' (caller, callee)")
    head = [str(c).strip() for c in frame.iloc[0]]
    if head[0] == "" and frame.shape[1] > 2 and frame.shape[0] == frame.shape[1]:
        names = head[1:]
        values = frame.iloc[1:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        if np.isnan(values).any():
            raise InputError("adjacency matrix holds non-numbers", source=source,
                             hint="cells are call weights (0: no call)")
        r, c = np.nonzero(values)
        rows = frame.iloc[1:, 0].astype(str).str.strip().tolist()
        return Topology.from_edges([(rows[i], names[j], values[i, j])
                                    for i, j in zip(r, c, strict=True)])
    if head[0].lower() in ("source", "src", "caller", "from"):
        frame = frame.iloc[1:]
    frame = frame.apply(lambda col: col.str.strip())
    empty = (frame.iloc[:, 0] == "") | (frame.iloc[:, 1] == "")
    if empty.any():
        line = int(np.flatnonzero(empty.to_numpy())[0]) + 1
        raise InputError("a topology row has an empty source or target", source=source,
                         where=f"row {line}", hint="each row: caller,callee[,weight]")
    return Topology.from_edges(frame)


def _adjacency(topo: Topology, names: np.ndarray):
    """The call graph over ``names`` (every node of ``topo`` is one): caller row, callee
    column, 1 per call."""
    src = np.searchsorted(names, topo.source)
    dst = np.searchsorted(names, topo.target)
    from scipy.sparse import coo_matrix  # lazily: scoring without a call graph needs no scipy
    m = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(names), len(names))).tocsr()
    m.data[:] = 1.0  # a repeated edge is one call
    return m


@dataclass
class _Near:
    index: dict[str, int]
    hops: np.ndarray  # undirected call-graph distance between entities (inf: not connected)


def _near_entities(topo: Topology, entities: np.ndarray, directed: bool = False) -> _Near:
    """Call-graph hops between ``entities`` (those in the graph); ``directed``: along call
    edges only, row = caller side (hops[i, j]: i reaches j by calling)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    nodes = topo.nodes
    index = {n: i for i, n in enumerate(nodes)}
    src = np.array([index[x] for x in topo.source], dtype=np.int64)
    dst = np.array([index[x] for x in topo.target], dtype=np.int64)
    adj = coo_matrix((np.ones(len(src)), (src, dst)), shape=(len(nodes), len(nodes))).tocsr()
    known = [str(e) for e in entities if str(e) in index]
    cols = np.array([index[e] for e in known], dtype=np.int64)
    # Distances from the alerting entities only (not all pairs of a large graph).
    hops = (shortest_path(adj, directed=directed, unweighted=True, indices=cols)[:, cols]
            if len(cols) else np.zeros((0, 0)))
    return _Near({e: i for i, e in enumerate(known)}, hops)
