"""Adapters: public labelled data sets -> ftml's metric and incident contract.

Each adapter returns :class:`Split` objects (train and test metrics in the wide layout, with
their incidents), split in time order so that nothing of the test period is seen in training.
The data lives in ``../shared/data`` (see its README); nothing here is copied into the repo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.io import to_ns

INCIDENT_COLUMNS = ["entity", "start", "end", "cause"]
#: SMD has no timestamps: row i is minute i from this (fictional) start.
SMD_START = pd.Timestamp("2026-01-05T00:00:00Z")
#: NAB has no separate training set: the first share of each series trains, the rest is judged.
NAB_TRAIN_SHARE = 0.4
#: Nezha labels the injection time only; its effects last a few minutes.
NEZHA_FAULT_MINUTES = 5
NEZHA_CAUSES = {"cpu_contention": "cpu_contention", "cpu_consumed": "cpu_consumed",
                "network_delay": "network_delay", "return": "code_error",
                "exception": "code_error"}


@dataclass
class Split:
    """One train/test experiment in ftml's contract."""

    name: str
    train: pd.DataFrame  # wide: timestamp (UTC), entity, one float column per metric
    train_incidents: pd.DataFrame  # entity, start, end, cause
    test: pd.DataFrame
    test_incidents: pd.DataFrame
    config: dict = field(default_factory=dict)  # ftml config sections to override
    task: str = "detection"  # "detection", "detection+diagnosis" or "diagnosis"
    notes: list[str] = field(default_factory=list)


def _no_incidents() -> pd.DataFrame:
    return pd.DataFrame({"entity": pd.Series(dtype=str),
                         "start": pd.Series(dtype="datetime64[ns, UTC]"),
                         "end": pd.Series(dtype="datetime64[ns, UTC]"),
                         "cause": pd.Series(dtype=str)})


def runs_of(flags: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of True as (start, end_exclusive) row indexes."""
    d = np.diff(np.r_[0, flags.astype(np.int8), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist(),
                    strict=True))


# --------------------------------------------------------------------------- SMD


def _machine_files(base: Path, names: list[str], start: pd.Timestamp, step: pd.Timedelta,
                   cause_of) -> tuple[list[pd.DataFrame], list[pd.DataFrame], list[tuple]]:
    """The SMD / ASD layout: per machine a train and a test file without timestamps (row i =
    step i; test right after train), the test file's ``label`` marking anomalies. Returns the
    train and test frames with timestamp and entity, and the test incidents (the contiguous
    labelled segments; ``cause_of(name, first_row)`` names each)."""
    train_parts, test_parts, incidents = [], [], []
    for name in names:
        tr = pd.read_csv(base / "train" / f"{name}.csv.gz")
        te = pd.read_csv(base / "test" / f"{name}.csv.gz")
        tr.pop("label") if "label" in tr else None
        label = te.pop("label").to_numpy()
        t_train = start + step * np.arange(len(tr))
        t_test = t_train[-1] + step * np.arange(1, len(te) + 1)
        tr.insert(0, "entity", name)
        tr.insert(0, "timestamp", t_train)
        te.insert(0, "entity", name)
        te.insert(0, "timestamp", t_test)
        train_parts.append(tr)
        test_parts.append(te)
        for a, b in runs_of(label == 1):
            incidents.append((name, t_test[a], t_test[b - 1], cause_of(name, a)))
    return train_parts, test_parts, incidents


def smd(root: Path, machines: list[str] | None = None) -> Split:
    """Server Machine Dataset: train on each machine's train file, judge its test file.

    Row i is minute i (train from :data:`SMD_START`, test right after). Incidents are the
    contiguous ``label == 1`` segments of the test files; their cause is the segment's dominant
    metric group (a weak label; there are no labelled incidents in training, so no diagnosis)."""
    base = root / "smd"
    names = machines or sorted(p.name.removesuffix(".csv.gz")
                               for p in (base / "train").glob("machine-*.csv.gz"))
    groups = pd.read_csv(base / "interpretation_segments_index.csv")
    group_of = {(r.machine, int(r.start)): r.dominant_group_by_fraction
                for r in groups.itertuples(index=False)}
    train_parts, test_parts, incidents = _machine_files(
        base, names, SMD_START, pd.Timedelta(minutes=1),
        lambda name, a: group_of.get((name, a), "unknown"))
    return Split(
        name="SMD", train=pd.concat(train_parts, ignore_index=True),
        train_incidents=_no_incidents(), test=pd.concat(test_parts, ignore_index=True),
        test_incidents=pd.DataFrame(incidents, columns=INCIDENT_COLUMNS),
        task="detection",
        notes=[f"{len(names)} machines, 38 metrics, row = minute; train file -> test file",
               "incidents: label==1 segments of the test files"])


# --------------------------------------------------------------------------- NAB


NAB_FOLDERS = ("realAWSCloudwatch", "realKnownCause")


def nab(root: Path, folders: tuple[str, ...] = NAB_FOLDERS) -> list[Split]:
    """NAB realAWSCloudwatch + realKnownCause, univariate: one entity per file, its one metric
    called ``reading`` (a ``value`` column would mark the long layout). Each series: the first
    :data:`NAB_TRAIN_SHARE` trains (its labelled windows given as training incidents), the rest
    is judged against its labelled windows. Files with the same step share one model."""
    base = root / "nab"
    windows = json.loads((base / "labels" / "combined_windows.json").read_text())
    by_step: dict[pd.Timedelta, list] = {}
    for folder in folders:
        for path in sorted((base / "data" / folder).glob("*.csv")):
            frame = pd.read_csv(path)
            t = pd.to_datetime(frame["timestamp"], utc=True)
            step = pd.Timedelta(int(np.median(np.diff(to_ns(t)))), unit="ns")
            by_step.setdefault(step, []).append((f"{folder}/{path.name}", t, frame["value"]))
    out = []
    for step, series in sorted(by_step.items()):
        trains, tests, tr_inc, te_inc = [], [], [], []
        for key, t, value in series:
            entity = key.split("/")[1].removesuffix(".csv")
            cut = t.iloc[int(len(t) * NAB_TRAIN_SHARE)]
            part = pd.DataFrame({"timestamp": t, "entity": entity,
                                 "reading": value.astype(float)})
            trains.append(part[part["timestamp"] < cut])
            tests.append(part[part["timestamp"] >= cut])
            for a, b in windows.get(key, []):
                a, b = pd.Timestamp(a, tz="UTC"), pd.Timestamp(b, tz="UTC")
                if a < cut:  # a window across the cut is clipped to each side
                    tr_inc.append((entity, a, min(b, cut - step), "anomaly"))
                if b >= cut:
                    te_inc.append((entity, max(a, cut), b, "anomaly"))
        minutes = step.total_seconds() / 60
        out.append(Split(
            name=f"NAB {minutes:g}-min", train=pd.concat(trains, ignore_index=True),
            train_incidents=pd.DataFrame(tr_inc, columns=INCIDENT_COLUMNS),
            test=pd.concat(tests, ignore_index=True),
            test_incidents=pd.DataFrame(te_inc, columns=INCIDENT_COLUMNS),
            config={"read": {"step": f"{int(step.total_seconds())}s"}}, task="detection",
            notes=[f"{len(series)} series with a {minutes:g} min step; first "
                   f"{NAB_TRAIN_SHARE:.0%} of each trains"]))
    return out


# --------------------------------------------------------------------------- Nezha


def _nezha_day(base: Path, date: str) -> pd.DataFrame:
    parts = []
    for path in sorted((base / "rca_data" / date / "metric").glob("*_metric.csv.gz")):
        frame = pd.read_csv(path)
        service = str(frame["PodName"].iloc[0]).rsplit("-", 2)[0]
        metrics = frame.drop(columns=["Time", "TimeStamp", "PodName"]).astype(float)
        metrics.insert(0, "entity", service)
        # The Time text, not the TimeStamp epoch: adservice's epochs on 2022-08-22 are 2e8 s off.
        when = pd.to_datetime(frame["Time"].str.slice(0, 19), format="%Y-%m-%d %H:%M:%S",
                              utc=True)
        metrics.insert(0, "timestamp", when)
        parts.append(metrics)
    return pd.concat(parts, ignore_index=True)


NEZHA_DAYS = ("2022-08-22", "2022-08-23")
NEZHA_DATES = NEZHA_DAYS


def nezha_days(root: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, int]]:
    """Each Nezha Online Boutique day: (metrics, incidents, faults dropped as outside the
    metrics' time range). One entity per service; see :func:`nezha`."""
    base = root / "nezha"
    labels = pd.read_csv(base / "labels_index.csv")
    days = {}
    for date in NEZHA_DAYS:
        frame = _nezha_day(base, date)
        lab = labels[labels["date"] == date]
        start = pd.to_datetime(lab["inject_time"], utc=True)
        inc = pd.DataFrame({"entity": lab["service"].astype(str).to_numpy(),
                            "start": start.to_numpy(),
                            "end": (start + pd.Timedelta(minutes=NEZHA_FAULT_MINUTES)).to_numpy(),
                            "cause": lab["fault_type"].map(NEZHA_CAUSES).to_numpy()})
        inc["start"] = pd.to_datetime(inc["start"], utc=True)
        inc["end"] = pd.to_datetime(inc["end"], utc=True)
        # Faults injected where the day's metrics do not reach cannot be judged.
        span = frame.groupby("entity")["timestamp"].agg(["min", "max"])
        ok = [e in span.index and span.loc[e, "min"] <= s <= span.loc[e, "max"]
              for e, s in zip(inc["entity"], inc["start"], strict=True)]
        days[date] = (frame, inc[ok].reset_index(drop=True), int(len(inc) - sum(ok)))
    return days


def nezha(root: Path, train_day: str = NEZHA_DAYS[0], test_day: str = NEZHA_DAYS[1]) -> Split:
    """Nezha Online Boutique: train on one day (default 2022-08-22), judge the other. One
    entity per service (pod names change between days). An incident runs from the labelled
    ``inject_time`` for :data:`NEZHA_FAULT_MINUTES`; causes cpu_contention, cpu_consumed,
    network_delay and code_error (return + exception, which barely show in pod metrics)."""
    days = nezha_days(root)
    (train, tr_inc, tr_drop), (test, te_inc, te_drop) = days[train_day], days[test_day]
    return Split(
        name="Nezha OB" if (train_day, test_day) == NEZHA_DAYS else
        f"Nezha OB {train_day[5:]}->{test_day[5:]}", train=train, train_incidents=tr_inc, test=test, test_incidents=te_inc,
        task="detection+diagnosis",
        notes=[f"{train['entity'].nunique()} services, {train.shape[1] - 2} pod metrics; "
               f"incident = inject_time + {NEZHA_FAULT_MINUTES} min; times from the Time "
               "column (one pod's TimeStamp epochs are 2e8 s off)",
               f"faults outside the metrics' time range dropped: {tr_drop} train, "
               f"{te_drop} test"])


# --------------------------------------------------------------------------- PetShop


PETSHOP_SCENARIOS = ("low_traffic", "high_traffic")


def petshop_class(derived: str) -> str:
    """Coarse fault class from the index's ``fault_class_derived``: errors, latency, lambda
    (inject flag of unspecified type) or overload."""
    return derived.split(" ", 1)[0]


def _petshop_read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, header=[0, 1, 2], index_col=0)
    frame.columns = ["|".join(c) for c in frame.columns]
    frame.index = pd.to_datetime(frame.index.astype(float), unit="s", utc=True)
    return frame


def _petshop_wide(frames: list[pd.DataFrame], entity: str) -> pd.DataFrame:
    w = pd.concat(frames).sort_index()
    return pd.concat([pd.DataFrame({"timestamp": w.index, "entity": entity}),
                      w.reset_index(drop=True)], axis=1)


def petshop(root: Path, scenarios: tuple[str, ...] = PETSHOP_SCENARIOS) -> list[Split]:
    """PetShop: diagnosis of the fault class of each issue. Per traffic scenario, one entity:
    normal operation (``noissue``) plus the training issues (each a labelled incident over its
    25 minutes) train; the test issues are judged. Only the scenarios with normal data are used.
    ``noissue`` is recorded months after the issues: it is moved back a whole number of weeks
    (hour of day and weekday kept) to end before them, so training can use it. Metrics: the
    series present in every issue and in 98 % of the normal data. Windows of 3 steps (an issue
    has 5 rows)."""
    base = root / "petshop"
    index = pd.read_csv(base / "labels_index.csv")
    out = []
    for sc in scenarios:
        d = base / "dataset" / sc
        issues = {}
        for split in ("train", "test"):
            for p in sorted((d / split).glob("issue_*/metrics.csv")):
                issues[(split, p.parent.name)] = _petshop_read(p)
        normal = _petshop_read(d / "noissue" / "metrics.csv.gz")
        cols = set(normal.columns[normal.notna().mean() >= 0.98])
        for frame in issues.values():
            cols &= set(frame.columns[frame.notna().all()])
        cols = sorted(cols)
        first_issue = min(f.index.min() for f in issues.values())
        week = pd.Timedelta(days=7)
        shift = week * int(np.ceil((normal.index.max() - first_issue + week) / week))
        normal = normal[cols].set_axis(normal.index - shift)
        parts = {"train": [normal], "test": []}
        incs: dict[str, list] = {"train": [], "test": []}
        entity = f"petshop-{sc}"
        for (split, issue), frame in issues.items():
            row = index[(index["traffic"] == sc) & (index["split"] == split) &
                        (index["issue"] == issue)]
            parts[split].append(frame[cols])
            incs[split].append((entity, frame.index.min(), frame.index.max(),
                                petshop_class(str(row["fault_class_derived"].iloc[0]))))

        out.append(Split(
            name=f"PetShop {sc}", train=_petshop_wide(parts["train"], entity),
            train_incidents=pd.DataFrame(incs["train"], columns=INCIDENT_COLUMNS),
            test=_petshop_wide(parts["test"], entity),
            test_incidents=pd.DataFrame(incs["test"], columns=INCIDENT_COLUMNS),
            config={"features": {"window": 3}, "read": {"step": "300s"}}, task="diagnosis",
            notes=[f"{len(cols)} series; {len(incs['train'])} train / {len(incs['test'])} test "
                   "issues"]))
    return out


#: PetShop's metric series per node, read as one metric column each (``metric|statistic``).
PETSHOP_NODE_METRICS = ("latency|Average", "latency|p50", "latency|p90", "latency|p95",
                        "latency|p99", "requests|Sum", "availability|Average")


@dataclass
class PetshopIssue:
    issue: str
    root: str  # the root-cause node
    start: pd.Timestamp
    end: pd.Timestamp
    fault_class: str


def _petshop_nodes(frame: pd.DataFrame) -> pd.DataFrame:
    """A PetShop metrics frame (3 header rows) -> long-to-wide per node: timestamp, entity
    (the node), one column per :data:`PETSHOP_NODE_METRICS`. A series the file lacks, or a
    step without a datapoint, is 0 (CloudWatch reports nothing when a node has no calls)."""
    parts = []
    nodes = sorted(set(c[0] for c in frame.columns))
    ts = pd.to_datetime(frame.index.astype(float), unit="s", utc=True)
    for node in nodes:
        part = pd.DataFrame({"timestamp": ts, "entity": node})
        for name in PETSHOP_NODE_METRICS:
            metric, stat = name.split("|")
            col = (node, metric, stat)
            part[name] = frame[col].to_numpy(float) if col in frame.columns else 0.0
        parts.append(part)
    return pd.concat(parts, ignore_index=True).fillna(0.0)


def petshop_nodes(root: Path, scenario: str
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[PetshopIssue]]:
    """PetShop per node, for root-cause ranking: (train metrics, train incidents, test
    metrics, test issues). One entity per node of the call graph. Training: normal operation
    (``noissue``, moved back a whole number of weeks to end before the first issue, as
    :func:`petshop` does) plus the training issues, each an incident on its root-cause node;
    test: the test issues (5 steps of 5 min each)."""
    base = root / "petshop"
    index = pd.read_csv(base / "labels_index.csv")
    d = base / "dataset" / scenario
    issues = {}
    for split in ("train", "test"):
        for p in sorted((d / split).glob("issue_*/metrics.csv")):
            raw = pd.read_csv(p, header=[0, 1, 2], index_col=0)
            issues[(split, p.parent.name)] = _petshop_nodes(raw)
    normal = _petshop_nodes(pd.read_csv(d / "noissue" / "metrics.csv.gz", header=[0, 1, 2],
                                        index_col=0))
    first_issue = min(f["timestamp"].min() for f in issues.values())
    week = pd.Timedelta(days=7)
    shift = week * int(np.ceil((normal["timestamp"].max() - first_issue + week) / week))
    normal["timestamp"] = normal["timestamp"] - shift
    nodes = sorted(set(normal["entity"]).union(*(set(f["entity"]) for f in issues.values())))
    train, test, tr_inc, te_issues = [normal], [], [], []
    for (split, issue), frame in issues.items():
        row = index[(index["traffic"] == scenario) & (index["split"] == split) &
                    (index["issue"] == issue)].iloc[0]
        t0, t1 = frame["timestamp"].min(), frame["timestamp"].max()
        rc = str(row["root_cause_node"])
        cls = petshop_class(str(row["fault_class_derived"]))
        if split == "train":
            train.append(frame)
            tr_inc.append((rc, t0, t1, cls))
        else:
            test.append(frame)
            te_issues.append(PetshopIssue(issue, rc, t0, t1, cls))

    def complete(parts: list[pd.DataFrame]) -> pd.DataFrame:
        # Every node in every part (a node a file lacks had no calls then: zeros).
        out = []
        for part in parts:
            times = part["timestamp"].drop_duplicates()
            grid = pd.MultiIndex.from_product([times, nodes], names=["timestamp", "entity"])
            out.append(part.set_index(["timestamp", "entity"]).reindex(grid, fill_value=0.0)
                       .reset_index())
        return (pd.concat(out, ignore_index=True).sort_values(["entity", "timestamp"])
                .drop_duplicates(["entity", "timestamp"]).reset_index(drop=True))

    return (complete(train), pd.DataFrame(tr_inc, columns=INCIDENT_COLUMNS), complete(test),
            sorted(te_issues, key=lambda i: i.start))


# --------------------------------------------------------------------------- ASD


#: ASD has no timestamps: row i is step i (5 minutes) from this (fictional) start.
ASD_START = pd.Timestamp("2026-01-05T00:00:00Z")
ASD_STEP = pd.Timedelta(minutes=5)


def asd(root: Path, servers: list[str] | None = None) -> Split:
    """Application Server Dataset: train on each server's train file, judge its test file
    (row i = 5-minute step i, test right after train). Incidents are the contiguous
    ``label == 1`` segments of the test files (cause ``anomaly``: no training incidents, so no
    diagnosis)."""
    base = root / "asd"
    names = servers or sorted((p.name.removesuffix(".csv.gz")
                               for p in (base / "train").glob("omi-*.csv.gz")),
                              key=lambda n: int(n.split("-")[1]))
    train_parts, test_parts, incidents = _machine_files(base, names, ASD_START, ASD_STEP,
                                                        lambda name, a: "anomaly")
    return Split(
        name="ASD", train=pd.concat(train_parts, ignore_index=True),
        train_incidents=_no_incidents(), test=pd.concat(test_parts, ignore_index=True),
        test_incidents=pd.DataFrame(incidents, columns=INCIDENT_COLUMNS),
        config={"read": {"step": "300s"}}, task="detection",
        notes=[f"{len(names)} servers, 19 metrics, row = 5 min; train file -> test file"])


# --------------------------------------------------------------------------- SKAB


SKAB_GROUPS = ("valve1", "valve2", "other")


def _skab_read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=";")
    when = pd.to_datetime(frame.pop("datetime"), format="%Y-%m-%d %H:%M:%S", utc=True)
    frame.insert(0, "timestamp", when)
    return frame


def skab(root: Path, groups: tuple[str, ...] = SKAB_GROUPS) -> Split:
    """SKAB water-pump test bed (1 s step): train on the ``anomaly-free`` run, judge every
    experiment file of ``groups``, each its own entity (runs overlap in time, so they cannot
    share one): a file's windows are judged against the one baseline training gave (ftml's
    fleet fallback for entities not seen in training). Incidents: the contiguous
    ``anomaly == 1`` rows of each file, cause = the index's fault class."""
    base = root / "skab"
    index = pd.read_csv(base / "labels_index.csv")
    cause_of = dict(zip(index["file"], index["fault_class_derived"], strict=True))
    train = _skab_read(base / "data" / "anomaly-free" / "anomaly-free.csv.gz")
    train = train.drop(columns=[c for c in ("anomaly", "changepoint") if c in train])
    train.insert(1, "entity", "skab-anomaly-free")
    parts, incidents = [], []
    for group in groups:
        paths = sorted((base / "data" / group).glob("*.csv.gz"),
                       key=lambda p: int(p.name.split(".")[0]))
        for path in paths:
            frame = _skab_read(path)
            frame = frame.drop_duplicates("timestamp", keep="last")
            label = frame.pop("anomaly").to_numpy() == 1
            frame.pop("changepoint")
            entity = f"skab-{group}-{path.name.split('.')[0]}"
            frame.insert(1, "entity", entity)
            parts.append(frame)
            t = frame["timestamp"]
            cause = str(cause_of.get(f"data/{group}/{path.name}", "anomaly"))
            for a, b in runs_of(label):
                incidents.append((entity, t.iloc[a], t.iloc[b - 1], cause))
    train = train.drop_duplicates("timestamp", keep="last")
    return Split(
        name="SKAB", train=train.reset_index(drop=True), train_incidents=_no_incidents(),
        test=pd.concat(parts, ignore_index=True),
        test_incidents=pd.DataFrame(incidents, columns=INCIDENT_COLUMNS),
        config={"read": {"step": "1s"}}, task="detection",
        notes=[f"anomaly-free run trains; {len(parts)} experiment files of "
               f"{', '.join(groups)} judged, one entity each"])


# --------------------------------------------------------------------------- ftml simulate


SIM_START = pd.Timestamp("2026-01-05T00:00:00Z")
SIM_TRAIN_DAYS, SIM_TEST_DAYS = 14, 7


def simulated(work: Path, seed: int, entities: int = 8, world: int = 0) -> Split:
    """``ftml simulate``: 14 days of a fleet train, the next 7 days of the same fleet drawn
    with another seed (faults and noise never seen in training) are judged, as
    bench/bench_quality.py does; ``world`` picks one of ``ftml.simulate.WORLDS``."""
    from ftml.simulate import simulate_fleet

    train, tr_inc = simulate_fleet(entities=entities, days=SIM_TRAIN_DAYS, seed=seed,
                                   start=str(SIM_START), world=world)
    test, te_inc = simulate_fleet(entities=entities, days=SIM_TEST_DAYS, seed=seed + 1000,
                                  fleet_seed=seed, world=world,
                                  start=str(SIM_START + pd.Timedelta(days=SIM_TRAIN_DAYS)))
    return Split(name=f"sim world {world} seed {seed}" if world else f"sim seed {seed}", train=train, train_incidents=tr_inc[INCIDENT_COLUMNS],
                 test=test, test_incidents=te_inc[INCIDENT_COLUMNS], task="detection",
                 notes=[f"{entities} entities, {SIM_TRAIN_DAYS} d -> {SIM_TEST_DAYS} d"])
