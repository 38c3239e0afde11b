"""Root cause of an incident across entities: is the injected entity ftml's top suspect?

Nezha Online Boutique (10 services, one entity each; the injected service is known). Each
direction trains ftml on one day (its labelled faults given as incidents, so calibration and
diagnosis use them; nothing of the judged day is seen) and scores the other day through
``api.score`` with the call graph (``dependency.csv``) as ``--topology``. For each injected fault
of the judged day, ftml's answer is the suspect list of the incident group that starts in
[inject_time - 1 min, inject_time + 5 min] (the earliest such group); no group = a miss in the
"all faults" rows, left out of the "detected" rows. AC@k: the injected service is among the first
k suspects; Avg@5: the mean of AC@1..AC@5.

Nezha has one pod per service on each day, so the injected pod and its service are the same
entity (pod level = service level here). The issue's BARO figure (Avg@5 0.86) is service level on
RCAEval's own Online Boutique data, not Nezha: a reference, not a like-for-like baseline.

Protocol: bench/PROTOCOL_rca.md, written and committed before the rankings were tuned. Detection
settings (:data:`CONFIG`, :data:`PETSHOP_CONFIG`) come from the earlier protocol: chosen on the
direction that judges 2022-08-22 (trained on 2022-08-23). The ranking was chosen among 4
candidates (``ftml.incidents.RANKINGS``: members, context, walk, walk_context) on the
**selection** sets only, Nezha judging 2022-08-22 and PetShop low_traffic; the **reported** sets
(Nezha judging 2022-08-23, PetShop high_traffic) were run once with the chosen one
(walk_context, the default). Round 2 (same file) tried three more rankings (walk_lift,
walk_recent, blend) and a group gap of 2 steps instead of 5 on the same selection sets; the rule
chose the gap (``diagnose.group_gap`` 2, the default since), the ranking stays walk_context, and
the reported sets were run once more with it. Round 3 tried three rankings that read every
entity's window scores from the group's onset (onset_score, onset_walk, onset_lift: a score
trail that batch, chunked, Dask and watch scoring keep when the ranking reads it; here the
ablations read it from the run's per-window table); none met the rule (each lowered AC@1 on
PetShop), so walk_context stays the default. Every ranking is shown as an ablation over the
same events and the default grouping (``ablation, ranking X``: Avg@5, with AC@1, AC@3 and the
groups starting per fault beside), the chosen one without the call graph (``ablation, no
topology``), with round 1's 5-step gap (``ablation, group gap 5 steps``) and, round 4,
with each way of joining groups (``ablation, join X``: ``ftml.incidents.JOINS``; none met
the rule, ``onset`` stays the default). ``incidents per alerted fault``: for each fault with an
event starting in its span, the distinct groups holding those events (goal 1). With ftml's default settings the event spans on Nezha last
hours (a fault every ~8.5 min, a 30-step cooldown, 15-step windows), so most faults would start
no new incident; the callers-share term of the member score is off on Nezha (``rank_graph`` 0,
it lowered AC@1 when the detection settings were chosen).

Baselines on the same faults: ``random`` (expected AC@k = k / entities); ``highest score``
(entities ranked by their highest window score from ftml's detector within the fault span: no
grouping, no ranking); ``BARO-style`` (per metric, the robust z of the 5 min after the
injection against the 30 min before, median / IQR of the before window, max |z| per entity;
it is given the true injection time, which ftml is not). The baselines rank every entity, so
they have no "miss". ``notifications per fault``: events (one per alerting entity, what an
operator was paged for before grouping) and groups starting in the fault span.

PetShop (``bench.datasets.petshop_nodes``): one entity per node of the call graph (42), its
latency (average, p50-p99), requests and availability; trained on normal operation plus the
8 training issues of a scenario (each an incident on its root-cause node), judged on its 18
test issues (5 steps of 5 min each), with ``graph.csv`` as the topology. A fault's group
starts within the issue; BARO's before-window is the normal operation. low_traffic is the
selection set, high_traffic is reported (the two scenarios with normal data). PetShop splits by case, not by
time: some training issues were recorded after test issues.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import datasets
from bench.common import SkipBench, require_data, row

TITLE = "Root cause across entities (Nezha Online Boutique, PetShop)"
BEFORE = pd.Timedelta(minutes=1)  # a group may start this long before the labelled injection
BARO_PRE = pd.Timedelta(minutes=30)
KS = (1, 2, 3, 4, 5)
#: The group gap before round 2 of bench/PROTOCOL_rca.md (candidate H, 2 steps, is the
#: default since): shown as an ablation.
GAP_ROUND1 = 5
#: ftml settings for Nezha (chosen on the tuning direction, see the protocol above).
CONFIG: dict = {
    "features": {"hour_of_day": False, "window": 5, "level_window": 120},
    "detect": {"cooldown": 5, "merge_gap": 3, "min_windows": 2, "of_windows": 3},
    "diagnose": {"rank_graph": 0.0},
}
#: ftml settings for PetShop: an issue is 5 steps of 5 min, so windows of 3 steps, an event
#: from one flagged window, no drift level, and a false-alarm budget of 2 per node-day (at
#: 0.1, 2 of the 18 tuning issues raised an event); chosen on low_traffic, high_traffic is
#: held out. The ranking keeps its default weights (the call-graph term raised AC@1 there).
PETSHOP_CONFIG: dict = {
    "read": {"step": "300s"},
    "features": {"hour_of_day": False, "window": 3, "level_window": 0},
    "detect": {"min_windows": 1, "of_windows": 1, "merge_gap": 1, "cooldown": 1,
               "alarm_budget": 2.0},
}


def _ranks_to_metrics(ranks: list[int | None]) -> dict[str, float | None]:
    """Per fault the 1-based rank of the right entity (None: not ranked) -> AC@1, AC@3, Avg@5."""
    if not ranks:
        return {"ac1": None, "ac3": None, "avg5": None}
    r = np.array([np.inf if x is None else x for x in ranks], dtype=float)
    ac = {k: float(np.mean(r <= k)) for k in KS}
    return {"ac1": ac[1], "ac3": ac[3], "avg5": float(np.mean([ac[k] for k in KS]))}


def _mean(values: list[int]) -> float | None:
    return float(np.mean(values)) if values else None


def _rank_of(entity: str, ranking: list[str]) -> int | None:
    return ranking.index(entity) + 1 if entity in ranking else None


def _baro(pre: pd.DataFrame, post: pd.DataFrame) -> list[str]:
    """BARO-style ranking: max over metrics of the robust z of the post-injection window
    against the pre-injection one, per entity, largest first."""
    metrics = [c for c in pre.columns if c not in ("timestamp", "entity")]
    med = pre.groupby("entity")[metrics].median()
    iqr = pre.groupby("entity")[metrics].quantile(0.75) - pre.groupby("entity")[metrics].quantile(
        0.25)
    peak = post.groupby("entity")[metrics].max()
    low = post.groupby("entity")[metrics].min()
    scale = iqr.where(iqr > 0, np.nan)
    z = np.maximum((peak - med).abs(), (low - med).abs()) / scale
    # A metric flat before (IQR 0) that moves after is a change; a tiny floor keeps it finite.
    z = z.fillna(((peak - low).abs() > 0).astype(float) * 1e3)
    score = z.max(axis=1).sort_values(ascending=False, kind="stable")
    return [str(e) for e in score.index]


def _group_frame(records: list[dict]) -> pd.DataFrame:
    groups = pd.DataFrame(records)
    if len(groups):
        groups["start_ts"] = pd.to_datetime(groups["start"], utc=True)
        groups["end_ts"] = pd.to_datetime(groups["end"], utc=True)
    return groups


def _first_group(groups: pd.DataFrame, lo: pd.Timestamp, hi: pd.Timestamp):
    """The earliest group that starts in [lo, hi], or None."""
    if not len(groups):
        return None
    hit = groups[(groups["start_ts"] >= lo) & (groups["start_ts"] <= hi)]
    return hit.sort_values("start_ts", kind="stable").iloc[0] if len(hit) else None


def _judge(train: tuple, test: tuple, topology: Path, work: Path, label: str,
           config: dict | None = None, before: pd.Timedelta = BEFORE,
           baro_normal: pd.DataFrame | None = None) -> list[dict]:
    """Train on ``train`` (metrics, incidents), score ``test`` (metrics, faults: entity =
    the root, start, end) and rank each fault's entities. A fault's group starts in
    [start - before, end]. BARO's before-window: the 30 min before the fault in the test
    metrics, or ``baro_normal`` (normal operation) when given."""
    from ftml import api
    from ftml.bundle import load_model
    from ftml.config import Config
    from ftml.incidents import JOINS, RANKINGS, ScoreTrail, assign_groups, grouping_for
    from ftml.io import write_table

    (tr_frame, tr_inc), (te_frame, te_inc) = train, test
    d = work / label.replace(" ", "_")
    d.mkdir(parents=True, exist_ok=True)
    write_table(tr_frame, d / "train.parquet")
    write_table(te_frame, d / "test.parquet")
    write_table(tr_inc, d / "train_incidents.csv")
    api.train([d / "train.parquet"], d / "model", incidents=d / "train_incidents.csv",
              config=Config.from_dict(config or CONFIG, source="bench rca"))
    res = api.score(d / "model", [d / "test.parquet"], windows_out=d / "windows.parquet",
                    topology=topology, groups_out=d / "groups.jsonl")
    groups = _group_frame(res.groups)
    model = load_model(d / "model")
    grouping = grouping_for(model, topology)
    # The window scores of the run, as api.score keeps them for a ranking that reads them.
    trail = ScoreTrail.from_table(res.window_table)
    # The ablation: every ranking of the protocol over the same events (and the chosen one
    # without the call graph); api.score above used the default.
    settings = {r: dataclasses.replace(grouping, ranking=r) for r in RANKINGS}
    settings["no topology"] = dataclasses.replace(grouping, topology=None)
    # Round 1's group gap (round 2 chose 2 steps), with the default ranking.
    settings["gap5"] = dataclasses.replace(grouping, gap=model.step * GAP_ROUND1)
    # Round 4: how groups form (ftml.incidents.JOINS), with the default ranking.
    settings.update({f"join {j}": dataclasses.replace(grouping, join=j) for j in JOINS})
    variant_events = {k: copy.deepcopy(res.events) for k in settings}
    variants = {k: _group_frame(assign_groups(variant_events[k], g, trail))
                for k, g in settings.items()}
    variant_events["default"] = res.events
    windows = res.window_table
    entities = sorted(te_frame["entity"].unique())
    ftml_all, ftml_det, top_all, baro_all, top_det, baro_det = [], [], [], [], [], []
    variant_all: dict[str, list[int | None]] = {k: [] for k in variants}
    variant_groups: dict[str, list[int]] = {k: [] for k in variants}
    # Per fault with an event starting in its span: the distinct groups of those events (what
    # an operator is notified of once Alertmanager groups by `group`).
    incidents_per: dict[str, list[int]] = {k: [] for k in variant_events}
    events_per, groups_per = [], []
    for inc in te_inc.itertuples(index=False):
        t = pd.Timestamp(inc.start)
        lo, hi = t - before, pd.Timestamp(inc.end)
        evs = [e for e in res.events if lo <= e.start <= hi]
        events_per.append(len(evs))
        for key, vevs in variant_events.items():
            touched = {e.group for e in vevs if lo <= e.start <= hi}
            if touched:
                incidents_per[key].append(len(touched))
        hit = (groups[(groups["start_ts"] >= lo) & (groups["start_ts"] <= hi)]
               .sort_values("start_ts", kind="stable") if len(groups) else groups)
        groups_per.append(len(hit))
        w = windows[(windows["timestamp"] >= t) & (windows["timestamp"] <= hi)]
        by_score = [str(e) for e in w.groupby("entity")["score"].max()
                    .sort_values(ascending=False, kind="stable").index]
        top_rank = _rank_of(inc.entity, by_score)
        post = te_frame[(te_frame["timestamp"] >= t) & (te_frame["timestamp"] <= hi)]
        pre = baro_normal if baro_normal is not None else te_frame[
            (te_frame["timestamp"] >= t - BARO_PRE) & (te_frame["timestamp"] < t)]
        baro_rank = _rank_of(inc.entity, _baro(pre, post))
        top_all.append(top_rank)
        baro_all.append(baro_rank)
        for key, frame in variants.items():
            v_hit = _first_group(frame, lo, hi)
            variant_groups[key].append(int(((frame["start_ts"] >= lo) & (frame["start_ts"] <= hi))
                                           .sum()) if len(frame) else 0)
            variant_all[key].append(_rank_of(inc.entity, [s[0] for s in v_hit["suspects"]])
                                    if v_hit is not None else None)
        if len(hit):
            rank = _rank_of(inc.entity, [s[0] for s in hit.iloc[0]["suspects"]])
            ftml_all.append(rank)
            ftml_det.append(rank)
            top_det.append(top_rank)
            baro_det.append(baro_rank)
        else:
            ftml_all.append(None)
    n_ent = len(entities)
    rand = {"ac1": 1 / n_ent, "ac3": min(3, n_ent) / n_ent,
            "avg5": float(np.mean([min(k, n_ent) / n_ent for k in KS]))}
    out = []
    for scope, f, tp, bo in (("all faults", ftml_all, top_all, baro_all),
                             ("detected", ftml_det, top_det, baro_det)):
        fm, tm, bm = _ranks_to_metrics(f), _ranks_to_metrics(tp), _ranks_to_metrics(bo)
        for key, name in (("ac1", "AC@1"), ("ac3", "AC@3"), ("avg5", "Avg@5")):
            out.append(row(f"{label}, {scope} (n={len(f)}): {name}", fm[key], bm[key],
                           vs="BARO-style", random=rand[key], highest_score=tm[key]))
    for variant, ranks in variant_all.items():
        nm = _ranks_to_metrics(ranks)
        what = (variant if variant == "no topology" or variant.startswith("join ") else
                f"group gap {GAP_ROUND1} steps (round 1)" if variant == "gap5" else
                f"ranking {variant}")
        out.append(row(f"{label}, all faults, ablation, {what}: Avg@5", nm["avg5"],
                       ablation_ac1=nm["ac1"], ablation_ac3=nm["ac3"],
                       groups_per_fault=float(np.mean(variant_groups[variant])),
                       incidents_per_alerted_fault=_mean(incidents_per[variant])))
    out.append(row(f"{label}: notifications per fault, events (before grouping)",
                   float(np.mean(events_per))))
    out.append(row(f"{label}: notifications per fault, groups (after grouping)",
                   float(np.mean(groups_per))))
    out.append(row(f"{label}: incidents per alerted fault (groups holding its events)",
                   _mean(incidents_per["default"]),
                   unit=f"{len(incidents_per['default'])} faults alerted"))
    out.append(row(f"{label}: faults with no group (missed)",
                   int(sum(x == 0 for x in groups_per)), unit=f"of {len(groups_per)}"))
    return out


def _petshop(root: Path, scenario: str, work: Path, label: str) -> list[dict]:
    tr, tr_inc, te, issues = datasets.petshop_nodes(root, scenario)
    faults = pd.DataFrame({"entity": [i.root for i in issues],
                           "start": [i.start for i in issues], "end": [i.end for i in issues]})
    graph = root / "petshop" / "dataset" / scenario / "graph.csv"
    normal = tr[tr["timestamp"] < tr_inc["start"].min()] if len(tr_inc) else tr
    return _judge((tr, tr_inc), (te, faults), graph, work, label, PETSHOP_CONFIG,
                  before=pd.Timedelta(0), baro_normal=normal)


def run(quick: bool = False) -> list[dict]:
    root = require_data()
    if not (root / "nezha").is_dir():
        raise SkipBench(f"{root} has no nezha")
    days = datasets.nezha_days(root)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ftml-bench-rca-") as tmp:
        work = Path(tmp)
        topo = work / "dependency.csv"
        deps = pd.read_csv(root / "nezha" / "rca_data" / "2022-08-22" / "metric" /
                           "dependency.csv.gz")
        deps.to_csv(topo, index=False)
        a, b = datasets.NEZHA_DATES
        pet = (root / "petshop").is_dir()
        # Reported sets first, worst first (PetShop high_traffic), then the selection sets.
        # FTML_BENCH_PARTS=selection runs the selection sets alone (a protocol's choice is
        # made on them before the reported sets are run).
        if os.environ.get("FTML_BENCH_PARTS", "all") != "selection":
            if pet:
                rows += _petshop(root, "high_traffic", work, "PetShop high_traffic (reported)")
            rows += _judge(days[a][:2], days[b][:2], topo, work,
                           f"Nezha OB judge {b} (reported)")
        if not quick:
            rows += _judge(days[b][:2], days[a][:2], topo, work, f"Nezha OB judge {a} (selection)")
            if pet:
                rows += _petshop(root, "low_traffic", work, "PetShop low_traffic (selection)")
    return rows
