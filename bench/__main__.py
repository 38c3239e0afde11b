"""Run the benchmarks: ``python -m bench [NAME...] [--quick] [--out FILE] [--no-write]``.

Every ``bench/bench_<NAME>.py`` with a ``run()`` is a benchmark (``python -m bench --list``);
with names, only those run. Results are printed as one table and written to
``docs/benchmarks.md`` (atomically) with the date, the commit and the figures; sections of
benchmarks not run this time are kept as they were. A benchmark that cannot run here (e.g. the
real data in ``../shared/data`` is absent) is skipped with a message, and the exit code stays 0;
a benchmark that fails makes it 1.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import REPO, SkipBench, fmt, git_commit

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
#: Columns every row has, in table order; other keys follow in order of first appearance.
COLUMNS = ("name", "ftml", "anchor", "vs", "ratio", "unit")
_SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /bench:(?P=name) -->\n",
                      re.S)


@dataclass
class Section:
    name: str
    title: str
    doc: str
    status: str = "ok"  # ok | skipped | failed
    message: str = ""
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def run_one(name: str, quick: bool) -> Section:
    module = importlib.import_module(f"bench.bench_{name}")
    doc = inspect.cleandoc(module.__doc__ or "")
    sec = Section(name, getattr(module, "TITLE", name), doc)
    run = getattr(module, "run", None)
    if run is None:
        sec.status, sec.message = "failed", f"bench/bench_{name}.py has no run()"
        return sec
    params = inspect.signature(run).parameters
    kwargs = {"quick": quick} if "quick" in params or any(
        p.kind is p.VAR_KEYWORD for p in params.values()) else {}
    started = time.perf_counter()
    print(f"== {name}: {sec.title}", flush=True)
    try:
        sec.rows = [dict(r) for r in run(**kwargs)]
    except SkipBench as exc:
        sec.status, sec.message = "skipped", str(exc)
        print(f"   skipped: {exc}", flush=True)
    except Exception as exc:  # one broken benchmark must not hide the others' figures
        sec.status, sec.message = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    sec.seconds = round(time.perf_counter() - started, 1)
    return sec


def columns(rows: list[dict]) -> list[str]:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows) or c in ("name",
                                                                                   "ftml")]
    for r in rows:
        for k in r:
            if k not in cols and k not in COLUMNS and k != "bench" and \
                    any(x.get(k) is not None for x in rows):
                cols.append(k)
    return cols


def text_table(sections: list[Section]) -> str:
    rows = [{"bench": s.name, **r} for s in sections for r in s.rows]
    if not rows:
        return "(no results)"
    cols = ["bench", *columns(rows)]
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    text = lambda i, v: v.ljust(widths[i]) if cols[i] in ("bench", "name", "vs", "unit",  # noqa: E731
                                                          "target", "detail") \
        else v.rjust(widths[i])
    lines = ["  ".join(text(i, c) for i, c in enumerate(cols)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(text(i, v) for i, v in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def _md_cell(v) -> str:
    return fmt(v).replace("|", "\\|")


def section_markdown(sec: Section, when: str, commit: str, quick: bool) -> str:
    lines = [f"## {sec.name}: {sec.title}", ""]
    how = f"{when}, commit `{commit}`, Python {platform.python_version()}, " \
          f"{os.cpu_count()} CPUs, {sec.seconds:g} s" + (", `--quick`" if quick else "")
    if sec.status == "skipped":
        lines += [f"Skipped ({how}): {sec.message}", ""]
    else:
        lines += [f"Measured {how}.", ""]
    if sec.doc:
        lines += [sec.doc, ""]
    if sec.rows:
        cols = columns(sec.rows)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" if c in ("name", "vs", "unit", "target", "detail")
                                    else "---:" for c in cols) + "|")
        lines += ["| " + " | ".join(_md_cell(r.get(c)) for c in cols) + " |" for r in sec.rows]
        lines.append("")
    return "\n".join(lines)


def merge_markdown(previous: str, sections: list[Section], when: str, commit: str,
                   quick: bool) -> str:
    """New sections replace old ones of the same name; others (and skipped benchmarks that
    have earlier figures) are kept."""
    kept = {m["name"]: m["body"] for m in _SECTION.finditer(previous)}
    for sec in sections:
        if sec.status == "ok" or (sec.status == "skipped" and sec.name not in kept):
            kept[sec.name] = section_markdown(sec, when, commit, quick)
    order = discover() + sorted(set(kept) - set(discover()))
    ran = ", ".join(f"{s.name} ({s.status})" for s in sections)
    head = ["# Benchmarks", "",
            "Written by `python -m bench` (`make bench`); do not edit by hand. Each section "
            "says when and at which commit it was measured: a run of some benchmarks keeps "
            "the other sections as they were. `ratio` = ftml / anchor.", "",
            f"Last run: {when}, commit `{commit}`: {ran}.", ""]
    body = [f"<!-- bench:{n} -->\n{kept[n].rstrip()}\n<!-- /bench:{n} -->\n" for n in order
            if n in kept]
    return "\n".join(head) + "\n" + "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="smaller data, for a quick look")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    known = discover()
    if args.list:
        print("\n".join(known))
        return 0
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"bench: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    commit = git_commit()
    sections = [run_one(n, args.quick) for n in (args.names or known)]
    print()
    print(text_table(sections))
    for s in sections:
        if s.status != "ok":
            print(f"{s.name}: {s.status}: {s.message}")
    if not args.no_write:
        from ftml.io import write_text

        previous = args.out.read_text() if args.out.exists() else ""
        write_text(args.out, merge_markdown(previous, sections, when, commit, args.quick))
        print(f"-> {args.out}")
    return 1 if any(s.status == "failed" for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
