"""One file as a table, per format (CSV, JSON Lines, Parquet; gzipped or not), whole or in
chunks; parser and decompression failures become one :class:`~ftml.errors.InputError`."""

from __future__ import annotations

import gzip
import io as _io
import itertools
import json
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.errors import InputError
from ftml.io.contract import note_once
from ftml.io.files import _check_file


def read_table(path: str | Path, *, dtype_backend_numpy: bool = True,
               allow_empty: bool = False) -> pd.DataFrame:
    """Read one CSV / JSON Lines / Parquet file (optionally gzipped) as it is.

    ``allow_empty``: a header without rows is a valid, empty table (an incidents file of a
    period without incidents) instead of an error."""
    path = Path(path)
    fmt, gz = _check_file(path)
    with _read_errors(path, fmt, gz):
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "csv":
            frame = next(_iter_csv(path, gz, None))
        else:
            opener = gzip.open if gz else open
            with opener(path, "rt", encoding="utf-8-sig") as fh:
                text = fh.read()
            if not text.strip():
                raise InputError("file is empty", source=str(path),
                                 hint="give one JSON object per line")
            frame = _parse_jsonl(text, path, 0)
    if frame.shape[0] == 0 and not allow_empty:
        raise InputError("file has a header but no rows", source=str(path), hint="add data rows")
    return frame


@contextmanager
def _read_errors(path: Path, fmt: str, gz: bool) -> Iterator[None]:
    """Parser and decompression failures -> one InputError naming the file."""
    source = str(path)
    try:
        yield
    except InputError:
        raise
    except (gzip.BadGzipFile, zlib.error):
        raise InputError("corrupt gzip data", source=source,
                         hint="re-compress the file with gzip") from None
    except EOFError:
        raise InputError("gzip file is truncated", source=source,
                         hint="copy or compress the file again") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=source,
                         hint="save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise InputError("file is empty", source=source,
                         hint="give a file with a header and rows") from None
    except pd.errors.ParserWarning as exc:
        # index_col=False turns a first row longer than the header into this warning (made an
        # error): pandas would otherwise silently shift columns.
        if "header" in str(exc):
            raise InputError("first data row has more fields than the header", source=source,
                             where="line 2",
                             hint="every row needs as many fields as the header") from None
        raise InputError(f"cannot parse CSV: {_first_line(exc)}", source=source) from None
    except pd.errors.ParserError as exc:
        raise _csv_error(exc, source) from None
    except Exception as exc:
        # pyarrow reports a broken file as a plain OSError or as one of its own errors.
        if fmt == "parquet" and (isinstance(exc, (OSError, ValueError))
                                 or type(exc).__module__.startswith("pyarrow")):
            raise InputError("parquet file is corrupt", source=source,
                             hint="copy or export the file again") from None
        if isinstance(exc, OSError):
            raise InputError(f"cannot read file: {_first_line(exc)}", source=source) from None
        raise


def _csv_error(exc: Exception, source: str) -> InputError:
    text = _first_line(exc)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if m:
        return InputError(f"row has {m.group(3)} fields, the header {m.group(1)}", source=source,
                          where=f"line {m.group(2)}",
                          hint="every row needs as many fields as the header")
    return InputError(f"cannot parse CSV: {text}", source=source,
                      hint="check quoting and the field separator")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


#: Field separators a CSV may use besides the comma (SKAB's are ';'; exports from spreadsheets
#: in many locales too): the header line decides.
OTHER_SEPARATORS = (";", "\t", "|")


def field_separator(path: Path, gz: bool) -> str:
    """The CSV's field separator: ``,`` unless its header line has none and holds one of
    :data:`OTHER_SEPARATORS` (the most frequent); a ``.tsv`` file is tab-separated. Said on
    stderr when not a comma, since the file reads as one column otherwise and the error would
    blame a missing timestamp column."""
    if ".tsv" in path.name.lower():
        return "\t"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline(65536)
    except (OSError, EOFError, zlib.error):
        return ","  # the reader itself reports a broken file
    if "," in header:
        return ","
    count, sep = max((header.count(c), c) for c in OTHER_SEPARATORS)
    if not count:
        return ","
    note_once(f"ftml: note: {path}: fields separated by {sep!r} (no comma in its header "
              "line), read so")
    return sep


def _iter_csv(path: Path, gz: bool, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """CSV in chunks (or whole with ``chunk_rows=None``), a too-long first row an error."""
    sep = field_separator(path, gz)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        # index_col=False: trailing commas do not turn the first column into an index.
        reader = pd.read_csv(path, sep=sep, compression="gzip" if gz else None, index_col=False,
                             low_memory=False, chunksize=chunk_rows)
    if chunk_rows is None:
        _check_short_rows(path, gz, sep, reader, 0, None, None)
        yield reader
        return
    with reader:
        first = True
        lines = None  # the file's lines, opened at the first chunk that may hold a short row
        offset = 0
        while True:
            # The warnings filter is set around the first read only (the header check happens
            # there): a generator must not leave it changed while suspended, and later reads
            # may run in another thread (filters are process-wide).
            if first:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    chunk = next(reader, None)
                first = False
            else:
                chunk = next(reader, None)
            if chunk is None:
                if lines is not None:
                    lines.close()
                return
            lines = _check_short_rows(path, gz, sep, chunk, offset, lines, chunk_rows)
            offset += len(chunk)
            yield chunk


_LINE_SEP = "\x1f"  # a separator no metric file holds: each record is read as one field


def _check_short_rows(path: Path, gz: bool, sep: str, chunk: pd.DataFrame, offset: int,
                      lines, chunk_rows: int | None):
    """Refuse a row with fewer fields than the header (the C parser fills them as empty,
    which would score them as missing values). Such a row has its last field empty; only a
    chunk with an empty last field is looked at again, as whole lines, read by the same
    parser in step with the chunks, so a clean file costs one isna of one column. Returns the
    lines reader to pass with the next chunk."""
    if lines is not None:
        view = next(lines)
    elif chunk.shape[1] < 2 or len(chunk) == 0 or not chunk.iloc[:, -1].isna().any():
        return None
    else:
        lines = pd.read_csv(path, sep=_LINE_SEP, header=None, names=["line"], dtype=str,
                            na_filter=False, compression="gzip" if gz else None,
                            skiprows=1 + offset, chunksize=chunk_rows or len(chunk))
        view = next(lines)
    if len(view) != len(chunk):  # lines the parser counts otherwise: no check, no false alarm
        lines.close()
        return None
    candidates = np.flatnonzero(chunk.iloc[:, -1].isna().to_numpy())
    if len(candidates):
        # Separators inside quotes only add to the count: no clean row is taken as short.
        fields = view["line"].iloc[candidates].str.count(re.escape(sep)).to_numpy() + 1
        short = np.flatnonzero(fields < chunk.shape[1])
        if len(short):
            i = int(candidates[short[0]])
            lines.close()
            raise InputError(f"row has {int(fields[short[0]])} fields, the header "
                             f"{chunk.shape[1]}", source=str(path), where=f"row {offset + i + 1}",
                             hint="every row needs as many fields as the header; an "
                                  "empty value is an empty field")
    if chunk_rows is None:
        lines.close()
        return None
    return lines


# Values as written: no guessing of dates or types (timestamps are parsed by the contract's
# rules), floats exact. pandas 3 deprecates convert_dates; dtype=False alone stops it there.
_JSON_OPTIONS: dict = {"lines": True, "dtype": False, "precise_float": True}
if int(pd.__version__.split(".")[0]) < 3:
    _JSON_OPTIONS["convert_dates"] = False


def _parse_jsonl(text: str, path: Path, line_offset: int) -> pd.DataFrame:
    """JSON Lines text -> frame; a line that is not a JSON object is an error naming it."""
    # pandas takes a line holding an array or a bare value without complaint; find it first.
    odd = _NOT_AN_OBJECT.search(text)
    if odd is None:
        try:
            return pd.read_json(_io.StringIO(text), **_JSON_OPTIONS)
        except (ValueError, TypeError):
            pass
    # Slow path, only on error: find the line that is not a JSON object.
    for lineno, line in enumerate(text.splitlines(), line_offset + 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", source=str(path),
                             where=f"line {lineno}",
                             hint="write one JSON object per line") from None
        if not isinstance(obj, dict):
            kind = "a JSON array" if isinstance(obj, list) else "not a JSON object"
            raise InputError(f"line is {kind}", source=str(path), where=f"line {lineno}",
                             hint="write one JSON object per line, as JSON Lines")
    raise InputError("cannot read JSON Lines", source=str(path),
                     hint="write one JSON object per line")


_NOT_AN_OBJECT = re.compile(r"^[ \t]*[^{\s]", re.MULTILINE)


def _iter_raw(path: Path, fmt: str, gz: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if fmt == "csv":
        yield from _iter_csv(path, gz, chunk_rows)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
    else:
        opener = gzip.open if gz else open
        line_offset = 0
        seen_text = False
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            while True:
                lines = list(itertools.islice(fh, chunk_rows))
                if not lines:
                    break
                text = "".join(lines)
                if text.strip():
                    seen_text = True
                    yield _parse_jsonl(text, path, line_offset)
                line_offset += len(lines)
        if not seen_text:
            raise InputError("file is empty", source=str(path),
                             hint="give one JSON object per line")
