"""Metric files before they are parsed: the format from the name, paths and globs, and first
bytes that must agree with the name."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from ftml.errors import InputError

FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
FORMAT_HINT = "use .csv, .csv.gz, .parquet or .jsonl"


_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


def file_format(path: str | Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    fmt = FORMATS.get(os.path.splitext(name)[1])
    if fmt is None:
        raise InputError("unknown file type", source=str(path), hint=FORMAT_HINT)
    if gz and fmt == "parquet":
        raise InputError("parquet files are compressed inside; do not gzip them",
                         source=str(path), hint="un-gzip the file")
    return fmt, gz


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Paths and globs -> existing files, in the order given (glob matches sorted)."""
    out: list[Path] = []
    for p in paths:
        p = str(p)
        if any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputError("no file matches this pattern", source=p,
                                 hint="check the path and quote the glob")
            out.extend(Path(m) for m in matches if os.path.isfile(m))
        else:
            path = Path(p)
            if path.is_dir():
                found = sorted(f for f in path.rglob("*") if f.is_file() and _known(f))
                if not found:
                    raise InputError("directory holds no metric files", source=p, hint=FORMAT_HINT)
                out.extend(found)
            else:
                out.append(path)
    if not out:
        raise InputError("no input files given", hint="pass --metrics PATH")
    return out


def _known(path: Path) -> bool:
    try:
        file_format(path)
    except InputError:
        return False
    return True


def _check_file(path: Path) -> tuple[str, bool]:
    """(format, gzipped) of a file that exists, is not empty and whose first bytes agree with its
    name: a wrong suffix is caught here, with a clear message, before a parser trips on it."""
    fmt, gz = file_format(path)
    source = str(path)
    if not path.exists():
        raise InputError("file not found", source=source, hint="check the path")
    if path.is_dir():
        raise InputError("is a directory, not a file", source=source, hint="give a file path")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
            if fmt == "parquet" and size >= 8:
                fh.seek(-4, os.SEEK_END)
                tail = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", source=source,
                         hint="check the file's permissions") from None
    if size == 0:
        raise InputError("file is empty", source=source, hint="give a file with a header and rows")
    if gz and not head.startswith(_GZIP_MAGIC):
        raise InputError("named .gz but not gzip-compressed", source=source,
                         hint="drop the .gz suffix or compress the file with gzip")
    if not gz and head.startswith(_GZIP_MAGIC):
        hint = ("un-gzip it: parquet is compressed inside" if fmt == "parquet"
                else f"name it {path.name}.gz")
        raise InputError("file is gzip-compressed but not named .gz", source=source, hint=hint)
    if fmt == "parquet":
        if head != _PARQUET_MAGIC:
            raise InputError("not a parquet file", source=source,
                             hint="name the file after its format: .csv, .jsonl or .parquet")
        if size < 8 or tail != _PARQUET_MAGIC:
            raise InputError("parquet file is truncated: it has no footer", source=source,
                             hint="copy or export the file again")
    elif head == _PARQUET_MAGIC:
        raise InputError("file is parquet but not named .parquet", source=source,
                         hint="name it .parquet")
    return fmt, gz
