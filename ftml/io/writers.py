"""Atomic writes: a temporary file beside the target, then one rename, so readers never see a
half-written file; tables and records in the format the name says."""

from __future__ import annotations

import gzip
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ftml.errors import InputError
from ftml.io.files import file_format
from ftml.io.timestamps import to_ns


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on failure it is removed, so readers never see a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp_file(path)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", source=str(path),
                         hint="check that the directory exists and is writable") from None
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", source=str(path),
                             hint="is it a directory, or read-only?") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp_file(path: Path) -> Path:
    """An empty, new file beside ``path``. Created with mode 0666 so that the umask applies, as
    for any new file (mkstemp's 0600 would stay on the result)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a frame atomically; the format follows the extension (.csv[.gz], .parquet, .jsonl).

    In text formats timestamps are written as ISO 8601 UTC ('Z'), with a fraction of a second
    only when some have one, so that they read back exactly."""
    fmt, gz = file_format(path)
    with atomic_path(path) as tmp:
        _writer(fmt, gz)(frame, tmp)


def _iso_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns -> ISO 8601 UTC text (naive ones taken as UTC)."""
    out = None
    for col in frame.columns:
        s = frame[col]
        aware = isinstance(s.dtype, pd.DatetimeTZDtype)
        if not (aware or pd.api.types.is_datetime64_dtype(s.dtype)):
            continue
        utc = s.dt.tz_convert("UTC") if aware else s.dt.tz_localize("UTC")
        ns = to_ns(utc.fillna(pd.Timestamp(0, tz="UTC")))
        sub_second = ns % 10**9
        if not sub_second.any():
            fmt = "%Y-%m-%dT%H:%M:%SZ"
        elif not (sub_second % 1000).any():
            fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        else:  # nanoseconds: strftime stops at microseconds
            fmt = None
        text = (utc.dt.strftime(fmt) if fmt else
                pd.Series(pd.DatetimeIndex(utc).tz_localize(None).astype(str), index=s.index)
                .str.replace(" ", "T") + "Z")
        out = frame.copy() if out is None else out
        out[col] = text.where(s.notna(), None)
    return frame if out is None else out


def _writer(fmt: str, gz: bool) -> Callable[[pd.DataFrame, Path], None]:
    def csv(frame, tmp):
        _iso_text(frame).to_csv(tmp, index=False, compression="gzip" if gz else None)

    def parquet(frame, tmp):
        frame.to_parquet(tmp, index=False)

    def jsonl(frame, tmp):
        text = _iso_text(frame).to_json(orient="records", lines=True)
        data = text.encode()
        if gz:
            data = gzip.compress(data)
        tmp.write_bytes(data)

    return {"csv": csv, "parquet": parquet, "jsonl": jsonl}[fmt]


def write_records(records: list[dict], path: str | Path) -> None:
    """Write a list of plain dicts (e.g. events) atomically. Nested values are kept as JSON
    text in CSV, and in Parquet where they mix types (e.g. [cause, probability] pairs)."""
    fmt, gz = file_format(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
        write_bytes(path, gzip.compress(text.encode()) if gz else text.encode())
        return
    frame = pd.DataFrame.from_records(records)
    for col in frame.columns:
        values = frame[col].tolist()
        nested = [v for v in values if isinstance(v, (list, dict))]
        if not nested:
            continue
        flat_strings = all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                           for v in nested)
        if fmt == "csv" or not flat_strings:
            frame[col] = [json.dumps(v) for v in values]
    write_table(frame, path)
