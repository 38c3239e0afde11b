"""Log messages -> template ids: masking (vectorised), then drain3's Drain parse tree.

Variable parts are masked first, over a whole block at once with one RE2 pass (Arrow):
host:port addresses, IPv4 addresses (with a port), UUIDs, hex numbers and ids, paths of two or more parts, and
numbers all become ``<*>``. Most masked messages repeat, so Drain sees each distinct masked
message once per miner (a cache maps it to its cluster id): mining costs per distinct
message, not per line. (Drain3's own ``TemplateMiner`` masks one message at a time in Python,
and persists with jsonpickle, which can build any object on load: the masking is done here
instead, and the state is saved as plain JSON, see :meth:`Templates.state_json`.)

Training adds messages (clusters are created and generalised); scoring only looks them up,
with the training's similarity threshold: a message that would have joined a cluster in
training is that template, any other is unseen (-1).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftml.config import LogConfig

PARAM = "<*>"
# One RE2 alternation, leftmost first: the longer kinds before the numbers inside them.
MASK = "|".join([
    r"\b[\w\-]+(?:\.[\w\-]+)+:\d{1,5}\b",  # host:port
    r"\b(?:\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?"  # IPv4[:port]
    r"|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}"  # UUID
    r"|0[xX][0-9a-fA-F]+"  # hex number
    r"|[0-9a-fA-F]{8,})\b",  # hex id, hash
    r"(?:/[\w.\-]+){2,}/?",  # path of two or more parts
    r"[-+]?\b\d+(?:\.\d+)?\b",  # number
])
UNSEEN = -1
STATE_VERSION = 1


def mask(messages: pa.Array) -> pa.Array:
    """Messages with their variable parts as ``<*>`` (one vectorised pass)."""
    return pc.replace_substring_regex(messages, MASK, PARAM)


def encode(messages: pa.Array) -> tuple[list[str], np.ndarray]:
    """Messages -> their distinct masked texts in the order they first occur, and each
    message's position in that list (a null message takes the first)."""
    enc = pc.dictionary_encode(mask(messages))
    return enc.dictionary.to_pylist(), np.asarray(pc.fill_null(enc.indices, 0), dtype=np.int64)


class Templates:
    """A Drain parse tree and the cache of masked message -> cluster id. Plain data (its
    state is JSON text); the drain3 objects are built from it on first use."""

    def __init__(self, *, depth: int = 4, sim_th: float = 0.4, max_children: int = 100,
                 state: str | None = None):
        self.depth = depth
        self.sim_th = sim_th
        self.max_children = max_children
        self.state = state  # JSON text of the tree and clusters (state_json), or None

    @classmethod
    def for_config(cls, cfg: LogConfig) -> Templates:
        return cls(depth=cfg.drain_depth, sim_th=cfg.drain_sim_th,
                   max_children=cfg.drain_max_children)

    # The runtime objects live outside the state: a bundle stores only the fields above.
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @property
    def drain(self):
        drain = self.__dict__.get("_drain")
        if drain is None:
            drain = self._build()
            self.__dict__["_drain"] = drain
            # Mined and looked-up ids are cached apart: a lookup may pick another cluster
            # than the one a message joined while the tree was growing.
            self.__dict__["_cache"] = {True: {}, False: {}}
        return drain

    def _build(self):
        from drain3.drain import Drain, LogCluster, Node

        drain = Drain(depth=self.depth, sim_th=self.sim_th, max_children=self.max_children,
                      param_str=PARAM)
        if self.state is None:
            return drain
        data = json.loads(self.state)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"template state of version {data.get('version')!r}")
        for cid, tokens in data["clusters"]:
            cluster = LogCluster(list(map(str, tokens)), int(cid))
            drain.id_to_cluster[int(cid)] = cluster
        drain.clusters_counter = int(data["counter"])

        def node(spec) -> Node:
            n = Node()
            n.cluster_ids = [int(c) for c in spec[0]]
            n.key_to_child_node = {str(k): node(v) for k, v in spec[1]}
            return n

        drain.root_node = node(data["tree"])
        known = set(drain.id_to_cluster)
        if any(c not in known for c in _tree_ids(drain.root_node)):
            raise ValueError("the template tree names clusters it does not hold")
        return drain

    def state_json(self) -> str:
        """The tree and clusters as JSON: what a bundle keeps, exactly the parse tree mined."""
        drain = self.drain

        def spec(n) -> list:
            return [list(n.cluster_ids), [[k, spec(c)] for k, c in n.key_to_child_node.items()]]

        return json.dumps({"version": STATE_VERSION, "counter": drain.clusters_counter,
                           "clusters": [[c.cluster_id, list(c.log_template_tokens)]
                                        for c in drain.id_to_cluster.values()],
                           "tree": spec(drain.root_node)}, separators=(",", ":"))

    def freeze(self) -> None:
        """Keep the mined state in :attr:`state` (before the model is saved)."""
        self.state = self.state_json()

    def ids(self, messages: pa.Array, learn: bool) -> np.ndarray:
        """Cluster id per message (int64); with ``learn``, new clusters are mined, else a
        message no cluster takes is :data:`UNSEEN`."""
        if not len(messages):
            return np.zeros(0, dtype=np.int64)
        distinct, codes = encode(messages)
        return self.masked_ids(distinct, learn)[codes]

    def masked_ids(self, distinct: list[str], learn: bool) -> np.ndarray:
        """Cluster id per masked message of ``distinct`` (:func:`encode`), mined in that order
        with ``learn``: mining masked messages in the order they first occur is what mining
        the lines they came from does (Dask training mines each file's list on the driver)."""
        drain = self.drain
        cache: dict[str, int] = self.__dict__["_cache"][bool(learn)]
        table = np.empty(len(distinct), dtype=np.int64)
        for i, text in enumerate(distinct):  # per distinct masked message, not per line
            cid = cache.get(text)
            if cid is None:
                cid = self._mine(drain, text) if learn else self._match(drain, text)
                cache[text] = cid
            table[i] = cid
        return table

    def _mine(self, drain, text: str) -> int:
        cluster, _ = drain.add_log_message(text)
        self.__dict__["_cache"][False].clear()  # the tree changed: lookups may differ now
        return int(cluster.cluster_id)

    def _match(self, drain, text: str) -> int:
        tokens = drain.get_content_as_tokens(text)
        cluster = drain.tree_search(drain.root_node, tokens, drain.sim_th, True)
        return UNSEEN if cluster is None else int(cluster.cluster_id)

    def text(self, cluster_id: int) -> str:
        cluster = self.drain.id_to_cluster.get(int(cluster_id))
        return "(unseen)" if cluster is None else cluster.get_template()

    def __len__(self) -> int:
        return len(self.drain.id_to_cluster)


def _tree_ids(root) -> list[int]:
    out, stack = [], [root]
    while stack:
        n = stack.pop()
        out.extend(n.cluster_ids)
        stack.extend(n.key_to_child_node.values())
    return out
