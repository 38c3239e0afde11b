"""Logs beside metrics: log files become per-entity series that train, score and evaluate
like metrics (issue 16).

``readers`` parses log files block by block (many formats, bad lines counted), ``templates``
mines message templates (masking, drain3), ``series`` counts lines per (entity, step) and
joins them to the metric frame, ``model`` is what a model bundle keeps of its logs.
"""

from ftml.logs.model import (
    LogInput,
    LogModel,
    LogView,
    as_log_input,
    check_cover,
    file_metrics,
    fit_logs,
    frame_joiner,
    joined_data,
    joined_metrics,
    mapped_cells,
    message_cells,
    new_log_model,
    read_for_model,
    read_series,
    require_logs,
    require_records,
    template_counts,
    warn_extra,
    warn_skipped,
)
from ftml.logs.readers import (
    FORMAT_NAMES,
    Lines,
    ReadStats,
    expand_log_paths,
    read_log_file,
    read_log_lines,
)
from ftml.logs.series import is_log_metric, log_series
from ftml.logs.templates import Templates

__all__ = ["FORMAT_NAMES", "Lines", "LogInput", "LogModel", "LogView", "ReadStats",
           "Templates", "as_log_input", "check_cover", "expand_log_paths", "file_metrics",
           "fit_logs", "frame_joiner", "is_log_metric", "joined_data", "joined_metrics",
           "log_series", "mapped_cells", "message_cells", "new_log_model", "read_for_model",
           "read_log_file", "read_log_lines", "read_series", "require_logs",
           "require_records", "template_counts", "warn_extra", "warn_skipped"]
