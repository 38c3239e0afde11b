"""The metric data contract: read, validate and normalise metric and incident files; write atomically.

Every input is validated here, once, at the boundary; later stages trust a :class:`MetricData`:
one frame sorted by entity then time, on a regular step per entity (missing steps present as
rows of NaN), UTC timestamps and float64 metric columns.

Errors are :class:`InputError` naming the file, the place (data rows count from 1 after the
header) and what to do.

One module per seam; each imports only the ones above it:

* ``contract``: :class:`MetricData`, what the readers produce;
* ``files``: a file's format from its name, paths and globs, first bytes that must agree;
* ``tables``: one file as a table, per format (CSV, JSON Lines, Parquet), whole or in chunks;
* ``timestamps``: ISO 8601 and epoch values -> UTC nanoseconds (``parse_timestamps``, ``to_ns``);
* ``entities``: the entity column as text, and ``--entity-map`` (``map_entities``);
* ``rows``: one raw table, wide or long layout -> validated wide rows (``to_rows``);
* ``grid``: wide rows -> the regular step (``infer_step``, ``normalise``, ``fill_short_gaps``);
* ``metrics``: metric files -> :class:`MetricData` (``read_metrics``) or streamed rows
  (``iter_metric_rows``);
* ``incidents``: incident files (``read_incidents``) and the labels they give rows;
* ``writers``: atomic writes of text, bytes, tables and records.

Every public name is importable from ``ftml.io`` itself.
"""

from __future__ import annotations

from ftml.io.contract import MetricData
from ftml.io.entities import entity_pattern, entity_stem, map_entities
from ftml.io.files import FORMAT_HINT, FORMATS, expand_paths, file_format
from ftml.io.grid import fill_short_gaps, infer_step, normalise
from ftml.io.incidents import INCIDENT_COLUMNS, incident_spans, label_times, read_incidents
from ftml.io.metrics import iter_metric_rows, read_metrics, rows_to_data, step_from_config
from ftml.io.rows import (
    DEFAULT_ENTITY,
    ENTITY_NAMES,
    LONG_COLUMNS,
    TEXT_SHARE,
    TIMESTAMP_NAMES,
    column_key,
    find_column,
    is_text_column,
    resolve_column,
    to_rows,
)
from ftml.io.tables import read_table
from ftml.io.timestamps import TIMESTAMP_HINT, parse_timestamps, to_ns
from ftml.io.writers import atomic_path, write_bytes, write_records, write_table, write_text

__all__ = [
    "DEFAULT_ENTITY", "ENTITY_NAMES", "FORMATS", "FORMAT_HINT", "INCIDENT_COLUMNS", "LONG_COLUMNS",
    "MetricData", "TEXT_SHARE", "TIMESTAMP_HINT", "TIMESTAMP_NAMES", "atomic_path", "column_key",
    "entity_pattern", "entity_stem", "expand_paths", "file_format", "fill_short_gaps",
    "find_column", "incident_spans", "infer_step", "is_text_column", "iter_metric_rows",
    "label_times", "map_entities", "normalise", "parse_timestamps", "read_incidents",
    "read_metrics", "read_table", "resolve_column", "rows_to_data", "step_from_config", "to_ns",
    "to_rows", "write_bytes", "write_records", "write_table", "write_text",
]
