"""The fleet simulator: shape of its output, its labels, and that faults and benign
disturbances look the way they should."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from ftml.errors import ConfigError
from ftml.io import read_incidents, read_table
from ftml.simulate import (
    CAUSES,
    COUNTERS,
    METRICS,
    simulate_fleet,
    simulate_logs,
    write_simulation,
)

ENTITIES, DAYS, SEED = 8, 7, 0
STEP = pd.Timedelta("60s")
STEPS = int(DAYS * 86_400 / STEP.total_seconds())
SMOOTH = 9  # steps of rolling median: hides lone spikes, restarts and short bursts
QUIET = pd.Timedelta("30min")  # margin around incidents that "normal time" keeps clear of
NO_MARGIN = pd.Timedelta(0)
COUNTER = COUNTERS[0]


@pytest.fixture(scope="module")
def clean():
    return simulate_fleet(ENTITIES, DAYS, seed=SEED, missing=False)


@pytest.fixture(scope="module")
def gappy():
    return simulate_fleet(ENTITIES, DAYS, seed=SEED, missing=True)


def entity_frame(metrics: pd.DataFrame, entity: str) -> pd.DataFrame:
    return metrics[metrics["entity"] == entity].set_index("timestamp")


def near_incidents(index: pd.DatetimeIndex, incidents: pd.DataFrame, entity: str,
                   margin: pd.Timedelta = NO_MARGIN) -> np.ndarray:
    mask = np.zeros(len(index), dtype=bool)
    for row in incidents[incidents["entity"] == entity].itertuples():
        mask |= (index >= row.start - margin) & (index <= row.end + margin)
    return mask


def during(frame: pd.DataFrame, incident) -> pd.DataFrame:
    return frame[(frame.index >= incident.start) & (frame.index <= incident.end)]


def counter_resets(frame: pd.DataFrame) -> pd.DatetimeIndex:
    return frame.index[np.flatnonzero(np.diff(frame[COUNTER].to_numpy()) < 0) + 1]


# --------------------------------------------------------------------------- contract


def test_same_seed_gives_identical_output(gappy):
    metrics, incidents = simulate_fleet(ENTITIES, DAYS, seed=SEED, missing=True)
    pd.testing.assert_frame_equal(metrics, gappy[0])
    pd.testing.assert_frame_equal(incidents, gappy[1])


def test_other_seed_gives_other_fleet_and_faults(clean):
    metrics, incidents = simulate_fleet(ENTITIES, DAYS, seed=SEED + 1, missing=False)
    assert not np.allclose(metrics["cpu_pct"], clean[0]["cpu_pct"])
    assert not incidents[["start", "cause"]].equals(clean[1][["start", "cause"]])


def test_columns_dtypes_and_row_order(gappy):
    metrics, incidents = gappy
    assert len(METRICS) >= 12
    assert list(metrics.columns) == ["timestamp", "entity", *METRICS]
    assert str(metrics["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert pd.api.types.is_string_dtype(metrics["entity"])
    assert all(metrics[m].dtype == np.float64 for m in METRICS)
    keys = metrics[["timestamp", "entity"]]
    assert keys.equals(keys.sort_values(["timestamp", "entity"], ignore_index=True))
    assert not keys.duplicated().any()
    names = metrics["entity"].unique()
    assert len(names) == ENTITIES
    assert all(re.fullmatch(r"svc-[a-z]+-\d{2}", n) for n in names)
    assert list(incidents.columns) == ["entity", "start", "end", "cause"]
    assert str(incidents["start"].dtype) == str(incidents["end"].dtype) == "datetime64[ns, UTC]"
    assert set(incidents["cause"]) <= set(CAUSES)


def test_entities_are_heterogeneous(clean):
    metrics = clean[0]
    roles = {name.split("-")[1] for name in metrics["entity"].unique()}
    assert len(roles) >= 4
    load = metrics.groupby("entity")["request_rate"].mean()
    assert load.max() / load.min() > 5


def test_weekends_are_quieter(clean):
    metrics = clean[0]
    weekend = metrics["timestamp"].dt.day_of_week >= 5
    per_day = metrics.groupby(["entity", weekend])["request_rate"].mean().unstack()
    assert (per_day[True] < per_day[False]).mean() >= 0.75  # batch workers barely dip


def test_every_cause_appears(clean):
    counts = clean[1]["cause"].value_counts()
    assert set(counts.index) == set(CAUSES)
    assert counts.min() >= 3


def test_incidents_lie_inside_the_range_on_the_grid_and_apart(clean):
    metrics, incidents = clean
    first, last = metrics["timestamp"].min(), metrics["timestamp"].max()
    assert (incidents["start"] >= first).all() and (incidents["end"] <= last).all()
    duration = incidents["end"] - incidents["start"]
    assert (duration >= pd.Timedelta("10min")).all() and (duration <= pd.Timedelta("8h")).all()
    for edge in ("start", "end"):
        assert ((incidents[edge] - first) % STEP == pd.Timedelta(0)).all()
    for _, own in incidents.groupby("entity"):
        own = own.sort_values("start")
        assert (own["start"].iloc[1:].to_numpy() - own["end"].iloc[:-1].to_numpy()
                >= pd.Timedelta("1h")).all()


def test_counter_only_grows_between_resets_to_zero(clean):
    metrics = clean[0]
    resets = 0
    for _, frame in metrics.groupby("entity"):
        counter = frame[COUNTER].to_numpy()
        steps = np.diff(counter)
        drops = np.flatnonzero(steps < 0) + 1
        # after a reset the counter holds no more than one step's worth of bytes
        assert (counter[drops] <= steps[steps > 0].max()).all()
        resets += drops.size
    assert resets >= ENTITIES


# --------------------------------------------------------------------------- benign disturbances


def test_deploy_restarts_happen_outside_incidents(clean):
    metrics, incidents = clean
    benign = 0
    for name, frame in metrics.groupby("entity"):
        frame = frame.set_index("timestamp")
        resets = counter_resets(frame)
        benign += (~near_incidents(resets, incidents, name)).sum()
    assert benign >= ENTITIES


def test_nightly_log_rotation_drops_the_disk(clean):
    metrics, incidents = clean
    for name, frame in metrics.groupby("entity"):
        frame = frame.set_index("timestamp")
        quiet = ~near_incidents(frame.index, incidents, name, QUIET)
        drop = np.diff(frame["disk_used_pct"].to_numpy(), prepend=np.nan) < -0.05
        hours = frame.index[drop & quiet].hour
        assert len(hours) >= DAYS - 3  # nights with an incident near 03:00 are left out
        assert set(hours) <= {3, 4}


def test_short_traffic_bursts_happen_outside_incidents(clean):
    metrics, incidents = clean
    bursts = 0
    for name, frame in metrics.groupby("entity"):
        frame = frame.set_index("timestamp")
        rps = frame["request_rate"]
        high = rps > 1.25 * rps.rolling(61, center=True, min_periods=1).median()
        bursts += (high & ~near_incidents(frame.index, incidents, name)).sum()
    assert bursts > 0


# --------------------------------------------------------------------------- faults

# The metric each fault drives far beyond anything the entity shows in normal time.
PRIMARY = [
    ("memory_leak", "mem_used_pct"),
    ("cpu_saturation", "cpu_pct"),
    ("network_degradation", "net_retransmits"),
    ("disk_full", "disk_used_pct"),
    ("pool_exhaustion", "connections"),
    ("bad_deploy", "error_rate"),
    ("slow_dependency", "latency_p95_ms"),
]


@pytest.mark.parametrize(("cause", "metric"), PRIMARY)
def test_fault_pushes_its_metric_beyond_normal(clean, cause, metric):
    metrics, incidents = clean
    for row in incidents[incidents["cause"] == cause].itertuples():
        frame = entity_frame(metrics, row.entity)
        smooth = frame[metric].rolling(SMOOTH, center=True, min_periods=1).median()
        normal = smooth[~near_incidents(frame.index, incidents, row.entity, QUIET)]
        assert during(smooth.to_frame(), row)[metric].max() > 1.05 * normal.max(), row


# Side effects: median over the fault's incidents of (during / hour before), up or down.
SECONDARY = [
    ("memory_leak", "gc_pause_ms", "up"),
    ("cpu_saturation", "latency_p95_ms", "up"),
    ("network_degradation", "net_errors", "up"),
    ("network_degradation", "latency_p95_ms", "up"),
    ("disk_full", "io_wait_pct", "up"),
    ("pool_exhaustion", "threads", "up"),
    ("pool_exhaustion", "cpu_pct", "down"),
    ("slow_dependency", "threads", "up"),
    ("slow_dependency", "cpu_pct", "down"),
]
CLEAR_CHANGE = 1.2


@pytest.mark.parametrize(("cause", "metric", "direction"), SECONDARY)
def test_fault_side_effects(clean, cause, metric, direction):
    metrics, incidents = clean
    ratios = []
    for row in incidents[incidents["cause"] == cause].itertuples():
        frame = entity_frame(metrics, row.entity)
        before = frame[metric][(frame.index < row.start)
                               & (frame.index >= row.start - pd.Timedelta("1h"))]
        inside = during(frame, row)[metric]
        peak = inside.rolling(SMOOTH, center=True, min_periods=1).median().max()
        ratios.append((peak if direction == "up" else inside.median())
                      / max(before.median(), 1e-6))
    if direction == "up":
        assert np.median(ratios) > CLEAR_CHANGE
    else:
        assert np.median(ratios) < 1 / CLEAR_CHANGE ** 0.5


@pytest.mark.parametrize("cause", CAUSES)
def test_only_leaks_and_deploys_restart_the_process(clean, cause):
    metrics, incidents = clean
    restarts = []
    for row in incidents[incidents["cause"] == cause].itertuples():
        resets = counter_resets(entity_frame(metrics, row.entity))
        restarts.append(int(((resets >= row.start) & (resets <= row.end)).sum()))
    expected = {"memory_leak": 1, "bad_deploy": 2}.get(cause, 0)  # OOM kill; deploy + rollback
    assert restarts == [expected] * len(restarts)


def test_memory_leak_ramps_up(clean):
    metrics, incidents = clean
    for row in incidents[incidents["cause"] == "memory_leak"].itertuples():
        mem = during(entity_frame(metrics, row.entity), row)["mem_used_pct"].to_numpy()
        quarter = len(mem) // 4
        assert mem[-2 * quarter:-quarter].mean() > mem[:quarter].mean() + 5


ERROR_JUMP = 5


def test_bad_deploy_errors_jump(clean):
    metrics, incidents = clean
    for row in incidents[incidents["cause"] == "bad_deploy"].itertuples():
        frame = entity_frame(metrics, row.entity)
        before = frame["error_rate"][frame.index < row.start].iloc[-60:]
        assert during(frame, row)["error_rate"].median() > ERROR_JUMP * before.median()


# --------------------------------------------------------------------------- collector artefacts


def test_missing_cells_and_rows_only_when_asked(clean, gappy):
    full, holey = clean[0], gappy[0]
    assert len(full) == ENTITIES * STEPS and not full[list(METRICS)].isna().any().any()
    nan_share = holey[list(METRICS)].isna().to_numpy().mean()
    assert 0 < nan_share < 0.01
    assert ENTITIES * STEPS * 0.95 < len(holey) < ENTITIES * STEPS
    longest = max(
        (frame["timestamp"].diff().max() for _, frame in holey.groupby("entity")),
    )
    assert longest >= pd.Timedelta("10min")


def test_missing_never_changes_the_kept_values(clean, gappy):
    keys = ["timestamp", "entity"]
    both = gappy[0].merge(clean[0], on=keys, suffixes=("", "_full"), validate="one_to_one")
    assert len(both) == len(gappy[0])
    for metric in METRICS:
        kept = both[metric].notna()
        np.testing.assert_array_equal(both.loc[kept, metric], both.loc[kept, f"{metric}_full"])
    pd.testing.assert_frame_equal(gappy[1], clean[1])


# --------------------------------------------------------------------------- options and files


def test_coarser_step_and_no_faults():
    metrics, incidents = simulate_fleet(entities=3, days=1, step="5m",
                                        faults_per_entity_day=0, missing=False)
    assert len(metrics) == 3 * 288
    assert (metrics["timestamp"].drop_duplicates().diff().dropna() == pd.Timedelta("5min")).all()
    assert incidents.empty and list(incidents.columns) == ["entity", "start", "end", "cause"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_write_simulation_writes_readable_files(tmp_path, fmt):
    summary = write_simulation(tmp_path / "sim", format=fmt, entities=3, days=2, seed=5,
                               faults_per_entity_day=2)
    metrics = read_table(summary["metrics_path"])
    assert summary["metrics_path"].endswith(f"metrics.{fmt}")
    assert len(metrics) == summary["rows"]
    assert list(metrics.columns) == ["timestamp", "entity", *METRICS]
    assert metrics["entity"].nunique() == summary["entities"] == 3
    incidents = read_incidents(summary["incidents_path"])
    assert len(incidents) == summary["incidents"] == sum(summary["incidents_per_cause"].values())
    assert set(summary["incidents_per_cause"]) == set(CAUSES)
    assert summary["days"] == 2


@pytest.mark.parametrize("kwargs", [
    {"entities": 0}, {"days": 0}, {"step": "10m"}, {"step": "soon"},
    {"faults_per_entity_day": -1}, {"start": "not a time"}, {"start": None},
])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        simulate_fleet(**kwargs)


def test_unknown_format_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        write_simulation(tmp_path, format="xlsx", entities=1, days=1)


def test_fleet_seed_keeps_the_fleet_and_redraws_the_rest(clean):
    metrics, incidents = simulate_fleet(ENTITIES, DAYS, seed=SEED + 7, fleet_seed=SEED,
                                        missing=False)
    assert set(metrics["entity"]) == set(clean[0]["entity"])
    load = metrics.groupby("entity")["request_rate"].mean()  # sizes belong to the fleet
    ratio = load / clean[0].groupby("entity")["request_rate"].mean()
    assert ratio.between(0.8, 1.25).all()
    assert not incidents[["start", "cause"]].equals(clean[1][["start", "cause"]])
    same = simulate_fleet(ENTITIES, 1, seed=SEED, fleet_seed=SEED, missing=False)
    pd.testing.assert_frame_equal(same[0], simulate_fleet(ENTITIES, 1, seed=SEED,
                                                          missing=False)[0])


def test_simulate_test_days_writes_a_later_period_of_the_same_fleet(tmp_path):
    from click.testing import CliRunner

    from ftml.cli import main

    result = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path), "--entities", "3",
                                       "--days", "1", "--test-days", "0.5", "--seed", "4"])
    assert result.exit_code == 0, result.output
    train = pd.read_csv(tmp_path / "train" / "metrics.csv", parse_dates=["timestamp"])
    test = pd.read_csv(tmp_path / "test" / "metrics.csv", parse_dates=["timestamp"])
    assert (tmp_path / "train" / "incidents.csv").exists()
    assert (tmp_path / "test" / "incidents.csv").exists()
    assert set(train["entity"]) == set(test["entity"])  # one fleet
    # The test period starts right after training, one step later.
    assert test["timestamp"].min() - train["timestamp"].max() == pd.Timedelta("60s")
    assert test["timestamp"].max() - test["timestamp"].min() < pd.Timedelta(hours=12)
    # Not a copy of training shifted in time: its own faults and noise.
    n = min(len(train), len(test))
    assert not np.allclose(train["cpu_pct"].to_numpy()[:n], test["cpu_pct"].to_numpy()[:n],
                           equal_nan=True)


# --------------------------------------------------------------------------- other worlds


@pytest.fixture(scope="module")
def worlds():
    return {w: simulate_fleet(entities=4, days=8, seed=3, missing=False, world=w)
            for w in range(5)}


def test_world_zero_is_the_simulator_and_worlds_repeat(worlds):
    base, inc = simulate_fleet(entities=4, days=8, seed=3, missing=False)
    pd.testing.assert_frame_equal(worlds[0][0], base)
    again, again_inc = simulate_fleet(entities=4, days=8, seed=3, missing=False, world=4)
    pd.testing.assert_frame_equal(again, worlds[4][0])
    pd.testing.assert_frame_equal(again_inc, worlds[4][1])
    for w in (1, 2):  # noise and cycles change; the faults stay where they were
        pd.testing.assert_frame_equal(worlds[w][1], inc)


def _excess_kurtosis(x: np.ndarray) -> float:
    x = x[np.isfinite(x)] - np.nanmean(x)
    return float((x**4).mean() / (x**2).mean() ** 2 - 3)


def test_world_one_has_heavier_tails_and_noisier_quiet_hours(worlds):
    (m0, _), (m1, _) = worlds[0], worlds[1]
    # The noise world 1 multiplies latency by is heavy-tailed (a Gaussian's excess is 0).
    added = np.log(m1["latency_p95_ms"] / m0["latency_p95_ms"]).to_numpy()
    assert _excess_kurtosis(added) > 2
    # Relative noise added to cpu is larger where traffic is low.
    ratio = np.log(m1["cpu_pct"] / m0["cpu_pct"]).replace([np.inf, -np.inf], np.nan)
    quiet = m0["request_rate"] <= m0["request_rate"].quantile(0.1)
    busy = m0["request_rate"] >= m0["request_rate"].quantile(0.9)
    assert ratio[quiet].std() > 1.5 * ratio[busy].std()


def test_world_two_has_quiet_weekends_and_a_nightly_batch(worlds):
    (m0, _), (m2, _) = worlds[0], worlds[2]
    weekend = m0["timestamp"].dt.day_of_week >= 5
    assert (m2.loc[weekend, "request_rate"].mean() <
            0.6 * m0.loc[weekend, "request_rate"].mean())
    batch = (m0["timestamp"].dt.hour == 2) & (m0["timestamp"].dt.minute < 45)
    assert (m2.loc[batch, "cpu_pct"] - m0.loc[batch, "cpu_pct"]).mean() > 10
    assert np.allclose(m2.loc[~batch & ~weekend, "cpu_pct"], m0.loc[~batch & ~weekend,
                                                                      "cpu_pct"])


def test_world_three_renames_pods_and_scales_in_and_out(worlds):
    (m0, i0), (m3, i3) = worlds[0], worlds[3]
    assert m3["entity"].nunique() > m0["entity"].nunique()
    stem = m3["entity"].str.rsplit("-", n=1).str[0]
    assert set(stem) == set(m0["entity"])
    assert len(m3) < len(m0)  # replicas absent for a while
    # Each incident moved with its pod: it names a pod that has rows over the incident.
    assert len(i3) == len(i0)
    for inc in i3.itertuples():
        rows = m3[(m3["entity"] == inc.entity) & (m3["timestamp"] >= inc.start) &
                  (m3["timestamp"] <= inc.end)]
        assert str(inc.entity).rsplit("-", 1)[0] in set(m0["entity"])
        assert len(rows) or not len(m0[(m0["timestamp"] >= inc.start) &
                                       (m0["timestamp"] <= inc.end)]) == 0


def test_unknown_world_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown world"):
        simulate_fleet(entities=2, days=1, world=9)


def test_cli_simulate_world(tmp_path):
    from click.testing import CliRunner

    from ftml.cli import main

    out = tmp_path / "w3"
    res = CliRunner().invoke(main, ["simulate", "--out", str(out), "--entities", "2",
                                    "--days", "2", "--world", "3"])
    assert res.exit_code == 0, res.output
    assert '"world": 3' in res.output
    metrics = read_table(out / "metrics.csv")
    assert metrics["entity"].str.count("-").min() == 3  # svc-<role>-<nn>-<pod suffix>
    bad = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path / "x"), "--world", "7"])
    assert bad.exit_code == 2


# --------------------------------------------------------------------------- logs

LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (INFO|WARNING|ERROR|CRITICAL) "
                      r"[\w.]+: (.*)$")
LOG_DAYS = 4


@pytest.fixture(scope="module")
def with_logs():
    return simulate_logs(entities=ENTITIES, days=LOG_DAYS, seed=SEED)


def log_records(text: str) -> pd.DataFrame:
    """(ts, level, msg) per record; a traceback's unprefixed lines belong to their record."""
    rows = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            rows.append([m.group(1), m.group(2), m.group(3)])
        else:
            assert rows and rows[-1][1] == "ERROR", f"stray continuation line {line!r}"
            rows[-1][2] += "\n" + line
    frame = pd.DataFrame(rows, columns=["ts", "level", "msg"])
    frame["ts"] = pd.to_datetime(frame["ts"], format="%Y-%m-%d %H:%M:%S,%f", utc=True)
    return frame


def in_incidents(ts: pd.Series, incidents: pd.DataFrame, entity: str, cause: str,
                 step: pd.Timedelta = STEP) -> np.ndarray:
    inside = np.zeros(len(ts), dtype=bool)
    for row in incidents[(incidents["entity"] == entity) & (incidents["cause"] == cause)
                         ].itertuples():
        inside |= ((ts >= row.start) & (ts < row.end + step)).to_numpy()
    return inside


def test_logs_leave_the_metrics_and_incidents_exactly_as_they_were(tmp_path, with_logs):
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    write_simulation(plain, entities=3, days=1, seed=4)
    summary = write_simulation(logged, entities=3, days=1, seed=4, logs=True)
    for name in ("metrics.csv", "incidents.csv"):
        assert (plain / name).read_bytes() == (logged / name).read_bytes()
    assert not (plain / "logs").exists()
    files = sorted(p.stem for p in (logged / "logs").glob("*.log"))
    assert files == sorted(read_table(logged / "metrics.csv")["entity"].unique())
    assert summary["log_lines"] > 0
    metrics, incidents = simulate_fleet(ENTITIES, LOG_DAYS, seed=SEED)
    pd.testing.assert_frame_equal(metrics, with_logs[0])
    pd.testing.assert_frame_equal(incidents, with_logs[1])


def test_logs_repeat_for_a_seed_and_change_with_it(with_logs):
    again = simulate_logs(entities=ENTITIES, days=LOG_DAYS, seed=SEED)[2]
    assert again == with_logs[2]
    other = simulate_logs(entities=ENTITIES, days=LOG_DAYS, seed=SEED + 1)[2]
    assert other != with_logs[2]


def test_log_lines_are_python_logging_records_in_time_order(with_logs):
    metrics, _, logs = with_logs
    t0, t1 = metrics["timestamp"].min(), metrics["timestamp"].max() + STEP
    for text in logs.values():
        rec = log_records(text)
        assert rec["ts"].is_monotonic_increasing
        assert rec["ts"].min() >= t0 and rec["ts"].max() < t1
        assert set(rec["level"]) >= {"INFO", "WARNING", "ERROR"}


def test_request_lines_follow_the_traffic(with_logs):
    metrics, _, logs = with_logs
    for entity, text in logs.items():
        rec = log_records(text)
        hour = rec[rec["level"] == "INFO"].set_index("ts").resample("1h").size()
        load = entity_frame(metrics, entity)["request_rate"].resample("1h").mean()
        both = pd.concat([hour, load], axis=1, join="inner").dropna()
        assert both.corr().iloc[0, 1] > 0.8, entity


@pytest.mark.parametrize(("cause", "words", "share_inside"), [
    ("bad_deploy", "Traceback (most recent call last)", 1.0),
    ("memory_leak", "GC overhead high", 1.0),
    ("pool_exhaustion", "QueuePool limit", 1.0),
    ("disk_full", "No space left on device", 1.0),
    ("slow_dependency", "Slow call to", 1.0),
    ("network_degradation", "Connection reset by peer", 1.0),
    ("cpu_saturation", "Event loop blocked", 1.0),
])
def test_each_cause_writes_its_own_lines_inside_its_faults_only(with_logs, cause, words,
                                                                share_inside):
    _, incidents, logs = with_logs
    seen = 0
    for entity, text in logs.items():
        rec = log_records(text)
        hits = rec["msg"].str.contains(words, regex=False).to_numpy()
        inside = in_incidents(rec["ts"], incidents, entity, cause)
        assert hits[inside].sum() >= hits.sum() * share_inside
        seen += hits.sum()
        for row in incidents[(incidents["entity"] == entity) & (incidents["cause"] == cause)
                             ].itertuples():
            during_it = ((rec["ts"] >= row.start) & (rec["ts"] < row.end + STEP)).to_numpy()
            if cause in ("bad_deploy", "memory_leak", "pool_exhaustion"):
                assert hits[during_it].sum() > 0, (entity, row.start)
    assert seen > 0


def test_a_bad_deploy_ships_a_new_version_errors_then_rolls_back(with_logs):
    _, incidents, logs = with_logs
    row = incidents[incidents["cause"] == "bad_deploy"].iloc[0]
    rec = log_records(logs[row["entity"]])
    near = rec[(rec["ts"] >= row["start"]) & (rec["ts"] < row["end"] + STEP)]
    starts = near[near["msg"].str.startswith("Starting ")]["msg"].tolist()
    assert len(starts) == 2  # the deploy, then the rollback
    assert near["msg"].str.startswith("Rolling back to version").sum() == 1
    errors = near[near["msg"].str.contains("Traceback", regex=False)]
    assert len(errors) > 0
    assert errors["msg"].str.split("\n").str[-1].nunique() == 1  # one bug: one new exception


def test_leak_warnings_rise_towards_the_oom_kill(with_logs):
    _, incidents, logs = with_logs
    first = second = 0
    for row in incidents[incidents["cause"] == "memory_leak"].itertuples():
        rec = log_records(logs[row.entity])
        gc = rec[rec["msg"].str.startswith("GC overhead high")]["ts"]
        mid = row.start + (row.end - row.start) / 2
        first += int(((gc >= row.start) & (gc < mid)).sum())
        second += int(((gc >= mid) & (gc <= row.end)).sum())
        oom = rec[rec["msg"].str.contains("Perhaps out of memory", regex=False)]["ts"]
        assert ((oom >= mid) & (oom < row.end + STEP)).sum() == 1
    assert second > 2 * first


def test_benign_deploys_write_startup_bursts_outside_faults(with_logs):
    _, incidents, logs = with_logs
    outside = 0
    for entity, text in logs.items():
        rec = log_records(text)
        boot = rec[rec["msg"].str.startswith("Booting worker")]
        faulty = np.zeros(len(boot), dtype=bool)
        for cause in CAUSES:
            faulty |= in_incidents(boot["ts"], incidents, entity, cause)
        outside += int((~faulty).sum())
    assert outside >= 10


def test_logs_of_other_worlds_are_a_config_error():
    with pytest.raises(ConfigError, match="world 0"):
        simulate_logs(entities=2, days=1, world=3)


def test_cli_simulate_logs_in_a_split(tmp_path):
    from click.testing import CliRunner

    from ftml.cli import main

    res = CliRunner().invoke(main, ["simulate", "--out", str(tmp_path), "--entities", "2",
                                    "--days", "1", "--test-days", "0.5", "--logs"])
    assert res.exit_code == 0, res.output
    for part in ("train", "test"):
        files = list((tmp_path / part / "logs").glob("*.log"))
        assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)


def test_logs_are_fast_enough_for_the_demo():
    import time

    started = time.perf_counter()
    simulate_logs(entities=8, days=3, seed=1)
    assert time.perf_counter() - started < 30  # shared 2-core machine: a loose bound
