"""The metric data contract (ftml.io): readers, timestamps, normalisation, incidents, writers."""

from __future__ import annotations

import gzip
import os
import string
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftml.config import ReadConfig
from ftml.errors import InputError
from ftml.io import (
    DEFAULT_ENTITY,
    atomic_path,
    fill_short_gaps,
    infer_step,
    iter_metric_rows,
    normalise,
    parse_timestamps,
    read_incidents,
    read_metrics,
    read_table,
    rows_to_data,
    to_ns,
    to_rows,
    write_records,
    write_table,
)

FORMATS = ["csv", "csv.gz", "parquet", "jsonl", "jsonl.gz"]
MINUTE = pd.Timedelta("60s")
PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text).tz_convert("UTC") if pd.Timestamp(text).tz else \
        pd.Timestamp(text, tz="UTC")


def expected_frame(wide: pd.DataFrame, entity: bool = True) -> pd.DataFrame:
    """What the contract promises for a regular, gap-free wide frame: sorted by entity then
    time, entity first, float64 metrics."""
    frame = wide.copy()
    if not entity:
        frame["entity"] = DEFAULT_ENTITY
    frame = frame.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)
    metrics = [c for c in wide.columns if c not in ("entity", "timestamp")]
    return frame[["entity", "timestamp", *metrics]].astype({m: "float64" for m in metrics})


def assert_same_data(frame: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(frame.columns) == list(expected.columns)
    assert frame["entity"].astype(str).tolist() == expected["entity"].astype(str).tolist()
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    np.testing.assert_array_equal(to_ns(frame["timestamp"]), to_ns(expected["timestamp"]))
    metrics = [c for c in expected.columns if c not in ("entity", "timestamp")]
    for m in metrics:
        assert frame[m].dtype == np.float64
    np.testing.assert_allclose(frame[metrics].to_numpy(), expected[metrics].to_numpy(),
                               rtol=0, atol=1e-9, equal_nan=True)


@contextmanager
def raises_at(match: str, *places: str):
    """Expect an InputError whose one line contains ``match`` and every place."""
    with pytest.raises(InputError) as info:
        yield info
    line = info.value.one_line()
    for part in (match, *places):
        assert part in line, f"{part!r} not in {line!r}"


# --------------------------------------------------------------------------- formats x layouts


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout,entity", [("wide", True), ("wide", False), ("long", True)])
def test_every_format_and_layout_reads_to_the_same_frame(tmp_path, make_wide_frame,
                                                         write_metrics, fmt, layout, entity):
    wide = make_wide_frame(periods=20)
    if not entity:
        wide = wide[wide["entity"] == "web-1"].drop(columns="entity")
    # Shuffled rows and a column order other than the canonical one: neither may matter.
    written = wide.sample(frac=1.0, random_state=1)[list(reversed(wide.columns))]
    path = write_metrics(written, tmp_path / f"metrics.{fmt}", layout)

    data = read_metrics([path])

    assert data.step == MINUTE
    assert data.sources == [str(path)]
    assert sorted(data.metrics) == ["cpu", "latency_ms"]
    assert data.entities == (["web-1", "web-2"] if entity else [DEFAULT_ENTITY])
    expected = expected_frame(wide, entity)
    assert_same_data(data.frame[["entity", "timestamp", "cpu", "latency_ms"]], expected)


def test_other_column_names_by_option(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("when,node,cpu\n2026-01-05T00:00:00Z,a,1\n2026-01-05T00:01:00Z,a,2\n")
    data = read_metrics([path], ReadConfig(timestamp_col="when", entity_col="node"))
    assert data.entities == ["a"] and data.metrics == ["cpu"]
    with raises_at("no column 'stamp'", str(path), "--timestamp-col"):
        read_metrics([path], ReadConfig(timestamp_col="stamp"))
    with raises_at("no timestamp column", str(path), "--timestamp-col"):
        read_metrics([path])


@pytest.mark.parametrize("time_col,entity_col,note", [
    ("Time", "host", None),
    ("TimeStamp", "PodName", None),  # Nezha's exports
    ("time", "pod_name", None),
    ("Date Time", "Service Name", None),
    ("ts", "kubernetes.pod.name", "entity column 'kubernetes.pod.name' (by its name"),
    ("timestamp", "agent.hostname", "entity column 'agent.hostname' (by its name"),
])
def test_known_entity_and_timestamp_names_are_found(tmp_path, caplog, time_col, entity_col,
                                                    note):
    path = tmp_path / "m.csv"
    path.write_text(f"{time_col},{entity_col},cpu\n2026-01-05T00:00:00Z,a,1\n"
                    "2026-01-05T00:01:00Z,b,2\n")
    with caplog.at_level("WARNING", logger="ftml.io"):
        data = read_metrics([path], ReadConfig(step="60s"))
    assert data.entities == ["a", "b"] and data.metrics == ["cpu"]
    said = [r.getMessage() for r in caplog.records if "entity column" in r.getMessage()]
    assert (said[0] if said else None) is None if note is None else note in said[0]


@pytest.mark.parametrize("option,read,left_out", [
    (None, "TimeStamp", "Time"),  # the candidates' order: timestamp before time
    ("Time", "Time", "TimeStamp"),
])
def test_a_second_timestamp_column_is_not_a_metric(tmp_path, caplog, option, read, left_out):
    path = tmp_path / "nezha.csv"  # as Nezha's exports: epoch TimeStamp and Go's Time
    path.write_text("Time,TimeStamp,PodName,cpu\n"
                    "2026-01-05 00:00:00.5 +0000 UTC m=+0.11,1767571200,a,1\n"
                    "2026-01-05 00:01:00.5 +0000 UTC m=+60.1,1767571260,a,2\n")
    with caplog.at_level("WARNING", logger="ftml.io"):
        data = read_metrics([path], ReadConfig(timestamp_col=option), drop_text=True)
    assert data.metrics == ["cpu"] and data.entities == ["a"]
    assert str(data.frame["timestamp"].iloc[0]).startswith("2026-01-05 00:00:")
    assert any(f"left out '{left_out}', a second timestamp column: the time read is '{read}'"
               in r.getMessage() for r in caplog.records)


def test_two_entity_like_columns_choose_none_and_say_so(tmp_path, caplog):
    path = tmp_path / "two.csv"
    path.write_text("timestamp,host.hostname,kubernetes.pod.name,cpu\n"
                    "2026-01-05T00:00:00Z,h,a,1\n2026-01-05T00:01:00Z,h,a,2\n")
    with caplog.at_level("WARNING", logger="ftml.io"):
        data = read_metrics([path], ReadConfig(step="60s"), drop_text=True)
    assert data.entities == ["default"]
    assert any("no entity column chosen among 'host.hostname', 'kubernetes.pod.name'"
               in r.getMessage() for r in caplog.records)


def test_an_entity_read_years_from_the_others_is_named(tmp_path, caplog):
    """One pod's epochs 2e8 s off (one of Nezha's exports): read, and said on stderr."""
    lines = ["timestamp,entity,cpu"]
    for entity, t0 in (("a", 1661140000), ("b", 1661140000), ("c", 1661140000 + 200_000_000)):
        lines += [f"{t0 + 60 * k},{entity},{k % 3}" for k in range(5)]
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="ftml.io"):
        data = read_metrics([path])
    assert data.entities == ["a", "b", "c"]
    said = [r.getMessage() for r in caplog.records if "far from the others" in r.getMessage()]
    assert len(said) == 1 and "1 entity read far" in said[0] and " c (2028-12-" in said[0]
    caplog.clear()
    path.write_text("\n".join(lines[:11]) + "\n")  # a and b alone: nothing to say
    with caplog.at_level("WARNING", logger="ftml.io"):
        read_metrics([path])
    assert not [r for r in caplog.records if "far from the others" in r.getMessage()]


def test_excluded_text_column_is_dropped(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,cpu,note\n2026-01-05T00:00:00Z,1,ok\n2026-01-05T00:01:00Z,2,x\n")
    with raises_at("text 'ok' in a metric column", "row 1, column 'note'", "--exclude note"):
        read_metrics([path])
    data = read_metrics([path], ReadConfig(exclude=["note"]))
    assert data.metrics == ["cpu"]


def test_missing_values_words_and_infinities_are_missing(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,cpu,mem\n"
                    "2026-01-05T00:00:00Z,1,1\n2026-01-05T00:01:00Z,NaN,inf\n"
                    "2026-01-05T00:02:00Z,n/a,-\n2026-01-05T00:03:00Z,,null\n"
                    "2026-01-05T00:04:00Z,2,-inf\n")
    frame = read_metrics([path], ReadConfig(max_fill_steps=0)).frame
    np.testing.assert_array_equal(frame["cpu"].isna(), [False, True, True, True, False])
    np.testing.assert_array_equal(frame["mem"].isna(), [False, True, True, True, True])


def test_integer_like_entities_read_the_same_in_every_format(tmp_path):
    # A blank cell makes pandas read the entity column as floats: 7.0 must still be '7'.
    path = tmp_path / "m.csv"
    path.write_text("timestamp,entity,cpu\n2026-01-05T00:00:00Z,7,1\n2026-01-05T00:01:00Z,7,2\n")
    assert read_metrics([path]).entities == ["7"]
    rows = to_rows(pd.DataFrame({"timestamp": ["2026-01-05T00:00:00Z"] * 2,
                                 "entity": [7.0, 8.0], "cpu": [1.0, 2.0]}), "mem", ReadConfig())
    assert rows["entity"].tolist() == ["7", "8"]


@pytest.mark.parametrize("content,problem,place", [
    ("timestamp,entity,cpu\n2026-01-05T00:00:00Z,a,1\n2026-01-05T00:01:00Z,,2\n",
     "empty entity", "row 2, column 'entity'"),
    ("timestamp,entity,metric,value\n2026-01-05T00:00:00Z,a,,1\n",
     "empty metric name", "row 1, column 'metric'"),
    ("timestamp,entity,metric,value,unit\n2026-01-05T00:00:00Z,a,cpu,1,%\n",
     "unexpected column 'unit'", "--exclude unit"),
    ("timestamp,entity,value\n2026-01-05T00:00:00Z,a,1\n", "unknown layout", "'metric'"),
    ("timestamp,entity,metric\n2026-01-05T00:00:00Z,a,cpu\n", "unknown layout", "'value'"),
    ("timestamp\n2026-01-05T00:00:00Z\n", "no metric columns", "metric"),
])
def test_table_errors_name_the_place(tmp_path, content, problem, place):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with raises_at(problem, str(path), place):
        read_metrics([path])


def test_metric_named_like_a_contract_column(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("time,host,entity\n2026-01-05T00:00:00Z,a,1\n")
    with raises_at("a metric is named 'entity'", str(path), "--exclude entity"):
        read_metrics([path], ReadConfig(timestamp_col="time", entity_col="host"))


# --------------------------------------------------------------------------- files


@pytest.mark.parametrize("name,content,problem", [
    ("empty.csv", b"", "file is empty"),
    ("blank.csv", b"\n\n", "file is empty"),
    ("blank.jsonl", b"\n\n", "file is empty"),
    ("header.csv", b"timestamp,cpu\n", "header but no rows"),
    ("plain.csv.gz", b"timestamp,cpu\n2026-01-05T00:00:00Z,1\n", "not gzip-compressed"),
    ("zipped.csv", gzip.compress(b"timestamp,cpu\n2026-01-05T00:00:00Z,1\n", mtime=0), "gzip-compressed"),
    ("zipped.jsonl", gzip.compress(b'{"timestamp": 1, "cpu": 1}\n', mtime=0), "gzip-compressed"),
    ("cut.csv.gz", gzip.compress(b"timestamp,cpu\n" + b"2026-01-05T00:00:00Z,1\n" * 500, mtime=0)[:60],
     "truncated"),
    ("text.parquet", b"timestamp,cpu\n2026-01-05T00:00:00Z,1\n", "not a parquet file"),
    ("latin1.csv", "timestamp,temp°C\n2026-01-05T00:00:00Z,1\n".encode("latin-1"), "UTF-8"),
    ("array.jsonl", b'[{"timestamp": 1, "cpu": 1}]\n', "JSON array"),
    ("notes.txt", b"hello", "unknown file type"),
])
def test_unreadable_files_are_one_input_error(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with raises_at(problem, str(path)):
        read_metrics([path])
    with raises_at(problem, str(path)):
        list(iter_metric_rows([path], chunk_rows=2))


def test_truncated_parquet(tmp_path, make_wide_frame):
    whole = tmp_path / "whole.parquet"
    make_wide_frame().to_parquet(whole)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 6):
        path = tmp_path / f"cut{cut}.parquet"
        path.write_bytes(data[:cut])
        with raises_at("truncated", str(path)):
            read_metrics([path])
        with raises_at("truncated", str(path)):
            list(iter_metric_rows([path]))


def test_corrupt_parquet_footer(tmp_path, make_wide_frame):
    path = tmp_path / "m.parquet"
    make_wide_frame().to_parquet(path)
    data = bytearray(path.read_bytes())
    data[-60:-8] = b"\xff" * 52  # the metadata, between the intact magic bytes
    path.write_bytes(bytes(data))
    with raises_at("parquet file is corrupt", str(path)):
        read_metrics([path])
    with raises_at("parquet file is corrupt", str(path)):
        list(iter_metric_rows([path]))


def test_parquet_named_csv(tmp_path, make_wide_frame):
    path = tmp_path / "m.csv"
    make_wide_frame().to_parquet(path)
    with raises_at("file is parquet", str(path), ".parquet"):
        read_metrics([path])


@pytest.mark.parametrize("content,problem,place", [
    # A longer first row used to shift every column silently (pandas took it for an index).
    ("timestamp,cpu\n2026-01-05T00:00:00Z,1,2\n2026-01-05T00:01:00Z,1\n",
     "more fields than the header", "line 2"),
    ("timestamp,cpu\n2026-01-05T00:00:00Z,1\n2026-01-05T00:01:00Z,1,2\n",
     "row has 3 fields, the header 2", "line 3"),
])
def test_ragged_csv_rows(tmp_path, content, problem, place):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with raises_at(problem, str(path), place):
        read_metrics([path])


def test_trailing_commas_are_not_an_index(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,cpu,\n2026-01-05T00:00:00Z,1,\n2026-01-05T00:01:00Z,2,\n")
    raw = read_table(path)
    assert raw["timestamp"].tolist() == ["2026-01-05T00:00:00Z", "2026-01-05T00:01:00Z"]


@pytest.mark.parametrize("name,text,sep", [
    ("semicolons.csv", "datetime;cpu;mem\n2026-01-05 00:00:00;1.5;2\n2026-01-05 00:01:00;2;3\n",
     ";"),
    ("tabs.txt.csv", "timestamp\tcpu\tmem\n2026-01-05T00:00:00Z\t1.5\t2\n"
     "2026-01-05T00:01:00Z\t2\t3\n", "\t"),
    ("pipes.csv.gz", "timestamp|cpu|mem\n2026-01-05T00:00:00Z|1.5|2\n2026-01-05T00:01:00Z|2|3\n",
     "|"),
    # A comma in the header decides: a ';' inside a value is a value.
    ("commas.csv", "timestamp,cpu,note\n2026-01-05T00:00:00Z,1.5,a;b\n"
     "2026-01-05T00:01:00Z,2,c\n", ","),
])
def test_field_separator_comes_from_the_header_line(tmp_path, caplog, name, text, sep):
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    with caplog.at_level("WARNING", logger="ftml.io"):
        raw = read_table(path)
    assert list(raw.columns)[1] == "cpu" and raw.shape == (2, 3)
    assert raw.iloc[:, 1].tolist() == [1.5, 2.0]
    notes = [r.getMessage() for r in caplog.records if "separated by" in r.getMessage()]
    assert notes == ([] if sep == "," else [f"ftml: note: {path}: fields separated by {sep!r} "
                                            "(no comma in its header line), read so"])
    if sep != ",":  # the whole read, to metrics on their grid
        assert read_metrics([path]).frame["cpu"].tolist() == [1.5, 2.0]


@pytest.mark.parametrize("lines,problem,place", [
    (['{"timestamp": 1, "cpu": 1}', '{"timestamp": 2, "cpu":'], "not valid JSON", "line 2"),
    (['{"timestamp": 1, "cpu": 1}', "", "[1, 2]"], "JSON array", "line 3"),
    (['{"timestamp": 1, "cpu": 1}', '"text"'], "not a JSON object", "line 2"),
])
def test_bad_json_lines_name_the_line(tmp_path, lines, problem, place):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with raises_at(problem, str(path), place):
        read_metrics([path])
    with raises_at(problem, str(path), place):
        list(iter_metric_rows([path], chunk_rows=1))


def test_missing_file_and_unmatched_glob(tmp_path):
    with raises_at("file not found", str(tmp_path / "nope.csv")):
        read_metrics([tmp_path / "nope.csv"])
    with raises_at("no file matches", "*.csv"):
        read_metrics([str(tmp_path / "*.csv")])
    with raises_at("no metric files", str(tmp_path)):
        read_metrics([tmp_path])


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize("values,expected", [
    (["2026-01-05T10:00:00Z", "2026-01-05T10:01:00Z"], ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    (["2026-01-05T12:00:00+02:00", "2026-01-05T07:01:00-03:00"],
     ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    (["2026-01-05T10:00:00", "2026-01-05 10:01:00"], ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    ([1767607200, 1767607260], ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    ([1767607200000, 1767607260000], ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    ([1767607200.5, 1767607260.25], ["2026-01-05T10:00:00.5Z", "2026-01-05T10:01:00.25Z"]),
    (["1767607200", "1767607260000"], ["2026-01-05T10:00Z", "2026-01-05T10:01Z"]),
    # Go's time.Time.String(): zone abbreviation and monotonic reading after the offset.
    (["2026-01-05 10:00:00.25 +0000 UTC m=+0.113112869",
      "2026-01-05 12:01:00 +0200 CEST m=+60.1"], ["2026-01-05T10:00:00.25Z", "2026-01-05T10:01Z"]),
    # Mixed precision and forms within one column.
    (["2026-01-05T10:00:00Z", "2026-01-05T10:00:00.123Z", "2026-01-05T10:00:00.123456789Z",
      "2026-01-05T12:00:01+02:00", "2026-01-05 10:00:02", "1767607203", "1767607204000"],
     ["2026-01-05T10:00:00Z", "2026-01-05T10:00:00.123Z", "2026-01-05T10:00:00.123456789Z",
      "2026-01-05T10:00:01Z", "2026-01-05T10:00:02Z", "2026-01-05T10:00:03Z",
      "2026-01-05T10:00:04Z"]),
    (pd.Series(pd.to_datetime(["2026-01-05T12:00:00+02:00"])), ["2026-01-05T10:00Z"]),
    (pd.Series(pd.to_datetime(["2026-01-05T10:00:00"])), ["2026-01-05T10:00Z"]),
], ids=["iso-z", "iso-offset", "iso-naive", "epoch-s", "epoch-ms", "epoch-s-fraction",
        "epoch-text-mixed-units", "go-time-string", "mixed-forms", "datetime-aware",
        "datetime-naive"])
def test_timestamp_forms_become_utc(values, expected):
    out = parse_timestamps(pd.Series(values), source="f", column="t")
    assert str(out.dtype) == "datetime64[ns, UTC]"
    assert out.tolist() == [utc(e) for e in expected]


@pytest.mark.parametrize("values,problem,row", [
    (["2026-01-05T10:00:00Z", "soon"], "cannot parse timestamp 'soon'", 2),
    (["2026-01-05T10:00:00Z", "2026-01-05T10:01:00Z", ""], "empty timestamp", 3),
    ([1767607200.0, np.nan], "empty timestamp", 2),
    ([1767607200.0, np.inf], "cannot parse timestamp", 2),
    (["2026-01-05T10:00:00Z", "3000-01-01T00:00:00Z"], "out of range", 2),
    ([1767607200, 10**20], "out of range", 2),
    ([True, False], "cannot parse timestamp True", 1),
])
def test_bad_timestamps_name_the_row(values, problem, row):
    with raises_at(problem, f"row {row + 10}, column 't'"):
        parse_timestamps(pd.Series(values), source="f", column="t", row_offset=10)


def test_epoch_milliseconds_in_a_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("ts,cpu\n1767607200000,1\n1767607260000,2\n")
    data = read_metrics([path])
    assert data.frame["timestamp"].tolist() == [utc("2026-01-05T10:00Z"), utc("2026-01-05T10:01Z")]


# --------------------------------------------------------------------------- step and grid


def rows_of(entity, times, **metrics) -> pd.DataFrame:
    """Wide rows as to_rows gives them."""
    return pd.DataFrame({"entity": entity, "timestamp": pd.to_datetime(times, utc=True),
                         **{k: np.asarray(v, dtype=float) for k, v in metrics.items()}})


@pytest.mark.parametrize("offsets_s,step", [
    ([0, 60, 120, 180, 240], "60s"),
    ([0.4, 59.7, 120.2, 179.9, 240.3], "60s"),  # jitter: not 59.95 s
    ([0, 15, 30, 60, 75], "15s"),  # a missing step does not change the median
    ([0, 0.25, 0.5, 0.75], "250ms"),
])
def test_step_inferred_from_median_spacing(offsets_s, step):
    times = pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(offsets_s, unit="s")
    rows = rows_of("a", times, cpu=np.arange(len(times)))
    assert infer_step(rows) == pd.Timedelta(step)


def test_jittered_timestamps_land_on_round_times():
    times = pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(
        [0.4, 59.7, 120.2, 179.9, 240.3], unit="s")
    data = rows_to_data(rows_of("a", times, cpu=[1, 2, 3, 4, 5]), ReadConfig(), ["f"])
    assert data.step == MINUTE
    assert (to_ns(data.frame["timestamp"]) % MINUTE.value == 0).all()
    assert data.frame["cpu"].tolist() == [1, 2, 3, 4, 5]


def test_given_step_averages_into_coarser_slots():
    times = pd.date_range("2026-01-05", periods=6, freq="60s", tz="UTC")
    rows = rows_of("a", times, cpu=[1, 2, 3, 4, 5, 6])
    data = rows_to_data(rows, ReadConfig(step="2m"), ["f"])
    assert data.step == pd.Timedelta("120s")
    # Each reading rounds to its nearest slot (halves up): 0 | 1,2 | 3,4 | 5.
    assert data.frame["cpu"].tolist() == [1, 2.5, 4.5, 6]
    assert (np.diff(to_ns(data.frame["timestamp"])) == 120 * 10**9).all()


@pytest.mark.parametrize("step,problem", [("abc", "cannot read step"), ("0s", "positive")])
def test_bad_step_option(tmp_path, make_wide_frame, write_metrics, step, problem):
    path = write_metrics(make_wide_frame(), tmp_path / "m.csv")
    with raises_at(problem, "--step"):
        read_metrics([path], ReadConfig(step=step))


def test_step_cannot_be_inferred_from_single_timestamps(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,entity,cpu\n2026-01-05T00:00:00Z,a,1\n2026-01-05T00:05:00Z,b,2\n")
    with raises_at("cannot infer the step", str(path), "--step"):
        read_metrics([path])
    assert len(read_metrics([path], ReadConfig(step="60s")).frame) == 2


def test_stray_timestamp_is_an_error_not_a_huge_grid(tmp_path, make_wide_frame, write_metrics):
    wide = make_wide_frame(entities=("a",))
    wide.loc[3, "timestamp"] = pd.Timestamp("1971-01-01", tz="UTC")
    path = write_metrics(wide, tmp_path / "m.csv")
    with raises_at("stray timestamps", str(path), "entity 'a'", "1971-01-01"):
        read_metrics([path])


def test_duplicates_averaged_and_unsorted_rows_sorted():
    rows = pd.concat([
        rows_of("b", ["2026-01-05T00:01Z", "2026-01-05T00:00Z"], cpu=[4, 3]),
        rows_of("a", ["2026-01-05T00:01Z", "2026-01-05T00:00Z", "2026-01-05T00:01Z"],
                cpu=[2, 1, 6]),
        rows_of("a", ["2026-01-05T00:00Z"], cpu=[np.nan]),  # a missing reading is no zero
    ], ignore_index=True)
    data = rows_to_data(rows, ReadConfig(), ["f"])
    assert data.frame["entity"].astype(str).tolist() == ["a", "a", "b", "b"]
    minutes = [utc("2026-01-05T00:00Z"), utc("2026-01-05T00:01Z")]
    assert data.frame["timestamp"].tolist() == minutes * 2
    assert data.frame["cpu"].tolist() == [1, 4, 3, 4]


def test_long_layout_repeats_average_like_wide_ones(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,entity,metric,value\n"
                    "2026-01-05T00:00:00Z,a,cpu,1\n2026-01-05T00:00:00Z,a,cpu,3\n"
                    "2026-01-05T00:00:00Z,a,cpu,5\n2026-01-05T00:01:00Z,a,cpu,7\n"
                    "2026-01-05T00:01:00Z,a,mem,9\n")
    frame = read_metrics([path]).frame
    assert frame["cpu"].tolist() == [3, 7]
    assert frame["mem"].tolist()[1] == 9 and np.isnan(frame["mem"].iloc[0])


# --------------------------------------------------------------------------- gaps


@pytest.mark.parametrize("column,limit,expected", [
    # short gap filled; gap longer than the limit left whole
    ([1, np.nan, np.nan, 4, np.nan, np.nan, np.nan, 8], 2, [1, 1, 1, 4, np.nan, np.nan, np.nan, 8]),
    ([1, np.nan, np.nan, 4, np.nan, np.nan, np.nan, 8], 3, [1, 1, 1, 4, 4, 4, 4, 8]),
    ([np.nan, np.nan, 3, np.nan], 5, [np.nan, np.nan, 3, 3]),  # leading NaNs have no source
    ([1, np.nan, 3], 0, [1, np.nan, 3]),  # limit 0: never fill
])
def test_fill_short_gaps(column, limit, expected):
    values = np.array(column, dtype=float)[:, None]
    fill_short_gaps(values, np.zeros(len(column), dtype=np.int64), limit)
    np.testing.assert_array_equal(values[:, 0], expected)


def test_gaps_never_filled_across_entities():
    values = np.array([[1.0, 1.0], [2.0, 2.0], [np.nan, 3.0], [np.nan, np.nan], [5.0, np.nan]])
    segments = np.array([0, 0, 1, 1, 1])
    fill_short_gaps(values, segments, 3)
    # Entity 1 begins missing cpu: entity 0's last value must not leak into it.
    np.testing.assert_array_equal(values[:, 0], [1, 2, np.nan, np.nan, 5])
    np.testing.assert_array_equal(values[:, 1], [1, 2, 3, 3, 3])


def test_gaps_on_the_grid(tmp_path):
    minutes = [0, 1, 3, 4, 5, 6, 10, 11]  # a 1-step gap (2), a 3-step gap (7-9)
    rows = rows_of("a", pd.Timestamp("2026-01-05", tz="UTC") + pd.to_timedelta(minutes, "m"),
                   cpu=np.arange(len(minutes)))
    for limit, gap_filled in [(1, False), (3, True)]:
        data = rows_to_data(rows, ReadConfig(step="60s", max_fill_steps=limit), ["f"])
        cpu = data.frame["cpu"].to_numpy()
        assert len(cpu) == 12  # every step from the first to the last reading is a row
        assert cpu[2] == cpu[1]
        assert np.isnan(cpu[7:10]).all() != gap_filled


# --------------------------------------------------------------------------- several files


def test_several_files_and_globs_concatenate(tmp_path, make_wide_frame, write_metrics):
    wide = make_wide_frame(entities=("a", "b", "c"))
    whole = read_metrics([write_metrics(wide, tmp_path / "whole.csv")])
    parts = [wide[wide["entity"] == e] for e in ("a", "b", "c")]
    write_metrics(parts[0], tmp_path / "part-1.csv")
    write_metrics(parts[1], tmp_path / "part-2.parquet", "long")
    write_metrics(parts[2], tmp_path / "part-3.jsonl.gz")
    listed = read_metrics([tmp_path / "part-1.csv", tmp_path / "part-2.parquet",
                           tmp_path / "part-3.jsonl.gz"])
    globbed = read_metrics([str(tmp_path / "part-*")])
    (tmp_path / "dir").mkdir()
    for p in tmp_path.glob("part-*"):
        p.rename(tmp_path / "dir" / p.name)
    in_dir = read_metrics([tmp_path / "dir"])
    for data in (listed, globbed, in_dir):
        assert len(data.sources) == 3
        assert_same_data(data.frame[whole.frame.columns], whole.frame)


def test_files_with_different_metrics_are_joined(tmp_path, make_wide_frame, write_metrics):
    wide = make_wide_frame(entities=("a",), periods=10)
    write_metrics(wide.drop(columns="latency_ms"), tmp_path / "cpu.csv")
    write_metrics(wide.drop(columns="cpu"), tmp_path / "lat.csv")
    data = read_metrics([tmp_path / "cpu.csv", tmp_path / "lat.csv"])
    assert sorted(data.metrics) == ["cpu", "latency_ms"]
    assert_same_data(data.frame[["entity", "timestamp", "cpu", "latency_ms"]], wide[
        ["entity", "timestamp", "cpu", "latency_ms"]])


def test_metrics_selection(tmp_path, make_wide_frame, write_metrics):
    path = write_metrics(make_wide_frame(), tmp_path / "m.csv")
    assert read_metrics([path], metrics=["latency_ms"]).metrics == ["latency_ms"]
    with raises_at("missing: disk", str(path)):
        read_metrics([path], metrics=["cpu", "disk"])


# --------------------------------------------------------------------------- chunked reading


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("layout", ["wide", "long"])
def test_chunks_give_the_rows_of_the_whole_file(tmp_path, make_wide_frame, write_metrics, fmt,
                                                layout):
    wide = make_wide_frame(entities=("a", "b", "c"), periods=13)
    path = write_metrics(wide.sample(frac=1, random_state=3), tmp_path / f"m.{fmt}", layout)
    if fmt == "parquet":  # small row groups, so that Parquet too comes in several pieces
        table = pd.read_parquet(path)
        table.to_parquet(path, row_group_size=7)
    cfg = ReadConfig()
    whole = to_rows(read_table(path), str(path), cfg)
    chunks = list(iter_metric_rows([path], cfg, chunk_rows=7))
    assert len(chunks) > 1
    pieces = pd.concat(chunks, ignore_index=True)
    if layout == "wide":
        pd.testing.assert_frame_equal(pieces, whole)
    else:  # long rows of one time may fall in two chunks: equal once on the grid
        a, _ = normalise(pieces, MINUTE, 3, ["cpu", "latency_ms"])
        b, _ = normalise(whole, MINUTE, 3, ["cpu", "latency_ms"])
        pd.testing.assert_frame_equal(a, b)


def test_long_repeats_split_across_chunks_average_every_reading(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("timestamp,entity,metric,value\n"
                    "2026-01-05T00:00:00Z,a,cpu,1\n2026-01-05T00:00:00Z,a,cpu,3\n"
                    "2026-01-05T00:00:00Z,a,cpu,5\n2026-01-05T00:01:00Z,a,cpu,7\n")
    rows = pd.concat(iter_metric_rows([path], chunk_rows=2), ignore_index=True)
    frame, _ = normalise(rows, MINUTE, 3, ["cpu"])
    assert frame["cpu"].tolist() == [3, 7]  # not the mean of per-chunk means


@pytest.mark.parametrize("fmt", ["csv", "jsonl.gz", "parquet"])
def test_chunk_errors_name_the_row_of_the_whole_file(tmp_path, make_wide_frame, fmt):
    wide = make_wide_frame(periods=20).astype({"cpu": object})
    wide.loc[33, "cpu"] = "oops"
    path = tmp_path / f"m.{fmt}"
    if fmt == "parquet":
        wide.astype({"cpu": str}).to_parquet(path, row_group_size=5)
    else:
        wide.to_csv(path, index=False) if fmt == "csv" else path.write_bytes(
            gzip.compress(wide.to_json(orient="records", lines=True, date_format="iso").encode()))
    with raises_at("text 'oops'", "row 34, column 'cpu'"):
        read_metrics([path])
    with raises_at("text 'oops'", "row 34, column 'cpu'"):
        list(iter_metric_rows([path], chunk_rows=5))


# --------------------------------------------------------------------------- incidents


ENTITIES = ["web-1", "web-2"]


@pytest.mark.parametrize("content,entities,expected", [
    ("entity,start,end,cause\nweb-2,2026-01-05T01:00:00Z,2026-01-05T01:30:00Z,cpu\n"
     "web-1,2026-01-05T00:00:00+01:00,2026-01-05T00:10:00Z,disk\n",
     ENTITIES, [("web-1", "2026-01-04T23:00Z", "2026-01-05T00:10Z", "disk"),
                ("web-2", "2026-01-05T01:00Z", "2026-01-05T01:30Z", "cpu")]),
    ("start,end,cause\n1767571200,1767571800000,leak\n", ["only"],
     [("only", "2026-01-05T00:00Z", "2026-01-05T00:10Z", "leak")]),
    ("host,start,end,cause\nweb-1,2026-01-05T00:00:00Z,2026-01-05T00:00:00Z, net \n",
     ENTITIES, [("web-1", "2026-01-05T00:00Z", "2026-01-05T00:00Z", "net")]),
])
def test_read_incidents(tmp_path, content, entities, expected):
    path = tmp_path / "incidents.csv"
    path.write_text(content)
    inc = read_incidents(path, entities)
    assert list(inc.columns) == ["entity", "start", "end", "cause"]
    assert [tuple(r) for r in inc.itertuples(index=False)] == [
        (e, utc(s), utc(t), c) for e, s, t, c in expected]


def test_header_only_incidents_file_means_no_incidents(tmp_path):
    # An incident tracker's export for a quiet period: valid, and the model is detection-only.
    path = tmp_path / "incidents.csv"
    path.write_text("entity,start,end,cause\n")
    inc = read_incidents(path, ENTITIES)
    assert list(inc.columns) == ["entity", "start", "end", "cause"] and len(inc) == 0


def test_read_incidents_jsonl(tmp_path):
    path = tmp_path / "incidents.jsonl"
    path.write_text('{"entity": "web-1", "start": "2026-01-05T00:00:00Z", '
                    '"end": "2026-01-05T00:05:00Z", "cause": "cpu"}\n')
    assert read_incidents(path, ENTITIES)["cause"].tolist() == ["cpu"]


@pytest.mark.parametrize("content,entities,problem,place", [
    ("entity,start,end,cause\nweb-1,2026-01-05T00:00:00Z,2026-01-05T00:10:00Z,cpu\n"
     "web-1,2026-01-05T02:00:00Z,2026-01-05T01:00:00Z,cpu\n", ENTITIES, "ends", "row 2"),
    ("entity,start,end,cause\nweb-9,2026-01-05T00:00:00Z,2026-01-05T00:10:00Z,cpu\n",
     ENTITIES, "entity 'web-9' that has no metrics", "row 1, column 'entity'"),
    ("start,end,cause\n2026-01-05T00:00:00Z,2026-01-05T00:10:00Z,cpu\n", ENTITIES,
     "no 'entity' column", "several entities"),
    ("entity,start,end,cause\nweb-1,2026-01-05T00:00:00Z,later,cpu\n", ENTITIES,
     "cannot parse timestamp 'later'", "row 1, column 'end'"),
    ("entity,start,end,cause\nweb-1,2026-01-05T00:00:00Z,,cpu\n", ENTITIES,
     "empty timestamp", "row 1, column 'end'"),
    ("entity,start,end,cause\nweb-1,2026-01-05T00:00:00Z,2026-01-05T00:10:00Z,\n", ENTITIES,
     "empty cause", "row 1, column 'cause'"),
    ("entity,start,cause\nweb-1,2026-01-05T00:00:00Z,cpu\n", ENTITIES, "no 'end' column",
     "entity, start, end, cause"),
])
def test_incident_errors(tmp_path, content, entities, problem, place):
    path = tmp_path / "incidents.csv"
    path.write_text(content)
    with raises_at(problem, str(path), place):
        read_incidents(path, entities)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_table_round_trips(tmp_path, make_wide_frame, fmt):
    wide = make_wide_frame(periods=5, step="1250ms")  # sub-second times must survive text
    path = tmp_path / f"out.{fmt}"
    write_table(wide, path)
    raw = read_table(path)
    np.testing.assert_array_equal(
        to_ns(parse_timestamps(raw["timestamp"], source="f", column="timestamp")),
        to_ns(wide["timestamp"]))
    back = read_metrics([path])
    assert back.step == pd.Timedelta("1250ms")
    assert_same_data(back.frame[["entity", "timestamp", "cpu", "latency_ms"]],
                     expected_frame(wide))


def test_write_table_keeps_utc_for_other_zones(tmp_path):
    frame = pd.DataFrame({"timestamp": pd.to_datetime(["2026-01-05T12:00:00+02:00"]),
                          "cpu": [1.0]})
    write_table(frame, tmp_path / "out.csv")
    assert "2026-01-05T10:00:00Z" in (tmp_path / "out.csv").read_text()


def test_write_records_round_trips_lists(tmp_path):
    records = [{"entity": "a", "top": ["cpu", "mem"]}, {"entity": "b", "top": []}]
    write_records(records, tmp_path / "ev.csv")
    write_records(records, tmp_path / "ev.jsonl.gz")
    assert pd.read_csv(tmp_path / "ev.csv")["top"].tolist() == ['["cpu", "mem"]', "[]"]
    assert pd.read_json(tmp_path / "ev.jsonl.gz", lines=True)["top"].tolist() == [
        ["cpu", "mem"], []]


class _Boom(RuntimeError):
    pass


def test_failed_write_leaves_no_file_nor_temp(tmp_path, make_wide_frame, monkeypatch):
    def half_then_fail(self, path, *args, **kwargs):
        with open(path, "w") as fh:
            fh.write("timestamp,cpu\n2026-01-05T00:0")
        raise _Boom("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(_Boom):
        write_table(make_wide_frame(), tmp_path / "out" / "metrics.csv")
    assert os.listdir(tmp_path / "out") == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text("old")
    with pytest.raises(_Boom), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise _Boom()
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.json"]


def test_written_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "a.csv")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == 0o644


def test_unwritable_destination_is_an_input_error(tmp_path):
    (tmp_path / "taken.csv").mkdir()
    with raises_at("cannot write", str(tmp_path / "taken.csv")):
        write_records([{"a": 1}], tmp_path / "taken.csv")
    assert sorted(os.listdir(tmp_path)) == ["taken.csv"]
    assert os.listdir(tmp_path / "taken.csv") == []


# --------------------------------------------------------------------------- properties

STEPS = [pd.Timedelta(s) for s in ("1s", "15s", "60s", "300s")]


@st.composite
def messy_rows(draw):
    """Wide rows of 1-3 entities on a step, with rows dropped, readings repeated (with other
    values), times jittered by less than a quarter step, all shuffled. Returns the rows, the
    step and, per (entity, slot), the readings of each metric."""
    step = draw(st.sampled_from(STEPS))
    n_entities = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for e in range(n_entities):
        n = draw(st.integers(2, 40))
        first = draw(st.integers(0, 10**6))  # slot number of the entity's first reading
        slots = first + np.arange(n)
        keep = rng.random(n) > draw(st.floats(0, 0.6))
        keep[[0, -1]] = True
        slots = slots[keep]
        repeats = rng.integers(1, 4 if draw(st.booleans()) else 2, size=len(slots))
        slots = np.repeat(slots, repeats)
        jitter = rng.uniform(-0.24, 0.24, len(slots)) * step.value
        cpu = np.round(rng.normal(50, 10, len(slots)), 3)
        mem = np.round(rng.normal(5, 1, len(slots)), 3)
        mem[rng.random(len(slots)) < 0.2] = np.nan
        parts.append(pd.DataFrame({
            "entity": f"host-{e}", "slot": slots,
            "timestamp": pd.to_datetime(slots * step.value + jitter.astype(np.int64), unit="ns",
                                        utc=True),
            "cpu": cpu, "mem": mem}))
    rows = pd.concat(parts, ignore_index=True).sample(frac=1, random_state=int(rng.integers(1e9)))
    return rows.reset_index(drop=True), step


@PROPERTY
@given(messy_rows(), st.integers(0, 4))
def test_normalised_rows_are_sorted_on_the_grid_with_every_mean(case, limit):
    rows, step = case
    frame, got_step = normalise(rows.drop(columns="slot"), step, limit, ["cpu", "mem"])
    assert got_step == step
    t = to_ns(frame["timestamp"])
    ent = frame["entity"].astype(str).to_numpy()
    # Sorted by entity then time, one row per step, every time on the grid.
    assert (ent[1:] >= ent[:-1]).all()
    same = ent[1:] == ent[:-1]
    assert (np.diff(t)[same] == step.value).all()
    assert (t % step.value == 0).all()

    read = rows.groupby(["entity", "slot"])
    means = read[["cpu", "mem"]].mean()  # pandas skips NaN: the mean of the readings there
    at = pd.Series(np.arange(len(frame)), index=pd.MultiIndex.from_arrays([ent, t // step.value]))
    for metric in ("cpu", "mem"):
        got = frame[metric].to_numpy()[at.loc[means.index].to_numpy()]
        measured = means[metric].notna().to_numpy()
        np.testing.assert_allclose(got[measured], means[metric].to_numpy()[measured], rtol=1e-12)
    # Each entity spans its first to its last reading, no further.
    span = read.size().reset_index().groupby("entity")["slot"].agg(["min", "max"])
    grid = pd.DataFrame({"entity": ent, "slot": t // step.value}).groupby("entity")["slot"] \
        .agg(["min", "max"])
    pd.testing.assert_frame_equal(grid, span, check_dtype=False)

    # Gaps: a run of unmeasured rows is filled (with the value before it) only if it is at
    # most ``limit`` long and follows a value of the same entity.
    slot_of_row = list(zip(ent, t // step.value, strict=True))
    for metric in ("cpu", "mem"):
        measured_slots = set(means.index[means[metric].notna()])
        measured = np.array([key in measured_slots for key in slot_of_row])
        values = frame[metric].to_numpy()
        for first, last in missing_runs(measured, ent):
            source = first > 0 and ent[first - 1] == ent[first] and measured[first - 1]
            if source and last - first <= limit:
                assert (values[first:last] == values[first - 1]).all()
            else:
                assert np.isnan(values[first:last]).all(), \
                    f"{metric}: gap of {last - first} rows filled with limit {limit}"


def missing_runs(measured: np.ndarray, entity: np.ndarray) -> list[tuple[int, int]]:
    """[first, last) row ranges of unmeasured rows, split where the entity changes."""
    runs, first = [], None
    for i in range(len(measured) + 1):
        ends = i == len(measured) or measured[i] or (i > 0 and entity[i] != entity[i - 1])
        if first is not None and ends:
            runs.append((first, i))
            first = None
        if i < len(measured) and not measured[i] and first is None:
            first = i
    return runs


@PROPERTY
@given(messy_rows())
def test_normalise_does_not_depend_on_row_order(case):
    rows, step = case
    rows = rows.drop(columns="slot")
    a, _ = normalise(rows, step, 3, ["cpu", "mem"])
    b, _ = normalise(rows.iloc[::-1], step, 3, ["cpu", "mem"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)


BAD_TEXT = st.text(string.ascii_letters + "%$#@!?,;: ", min_size=1, max_size=8).filter(
    lambda s: s.strip().lower() not in {"", "nan", "na", "n/a", "null", "none", "inf",
                                         "infinity", "e"})


@PROPERTY
@given(n_rows=st.integers(1, 30), n_metrics=st.integers(1, 4), entity=st.booleans(),
       data=st.data())
def test_text_in_a_metric_cell_names_its_column_and_row(n_rows, n_metrics, entity, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    metrics = [f"m{j}" for j in range(n_metrics)]
    raw = pd.DataFrame({"timestamp": pd.date_range("2026-01-05", periods=n_rows, freq="min")
                        .strftime("%Y-%m-%dT%H:%M:%SZ")})
    if entity:
        raw["host"] = rng.choice(["a", "b"], n_rows)
    for m in metrics:
        raw[m] = rng.normal(size=n_rows).astype(object)
    row = data.draw(st.integers(0, n_rows - 1), label="row")
    column = data.draw(st.sampled_from(metrics), label="column")
    text = data.draw(BAD_TEXT, label="text")
    raw.loc[row, column] = text
    offset = data.draw(st.sampled_from([0, 1000]), label="row_offset")
    with raises_at("in a metric column", f"row {offset + row + 1}, column '{column}'"):
        to_rows(raw, "metrics.csv", ReadConfig(), row_offset=offset)


@PROPERTY
@given(n_rows=st.integers(1, 30), data=st.data())
def test_bad_timestamp_names_its_row(n_rows, data):
    times = pd.date_range("2026-01-05", periods=n_rows, freq="min")
    form = data.draw(st.sampled_from(["iso", "epoch"]), label="form")
    stamps = np.array(times.strftime("%Y-%m-%dT%H:%M:%SZ") if form == "iso"
                      else (times.asi8 // 10**9).astype(str), dtype=object)
    row = data.draw(st.integers(0, n_rows - 1), label="row")
    stamps[row] = data.draw(BAD_TEXT, label="text")
    raw = pd.DataFrame({"timestamp": stamps, "cpu": np.arange(n_rows, dtype=float)})
    with raises_at("timestamp", f"row {row + 1}, column 'timestamp'"):
        to_rows(raw, "metrics.csv", ReadConfig())
