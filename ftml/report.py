"""Reports of an evaluation: a text summary for the terminal, the JSON report, and a
self-contained HTML page (plots drawn with matplotlib, embedded as PNG; no network).

matplotlib is needed for the HTML page only: ``pip install 'ftml[report]'``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.errors import ConfigError
from ftml.evaluate import BASELINES, Evaluation
from ftml.io import to_ns, write_text

#: Sections of the HTML page, in order: (id, title). Tests and readers rely on the ids.
SECTIONS = (
    ("summary", "Summary"),
    ("detection", "Detection"),
    ("timeline", "Score timeline"),
    ("diagnosis", "Diagnosis"),
    ("recovery", "Recovery"),
    ("baselines", "Baselines"),
    ("entities", "Entities"),
)
#: At most this many entities get a metric panel (those with most incidents and events first).
MAX_PANELS = 12
#: Metrics drawn per entity panel.
PANEL_METRICS = 4

_DETECTION_ROWS = (
    ("event_recall", "event recall"),
    ("event_precision", "event precision"),
    ("event_f1", "event F1"),
    ("false_alarms_per_entity_day", "false alarms / entity-day"),
    # What the threshold promised: the same figure on the training calibration slice.
    ("calibration_false_alarms_per_entity_day", "  same, on calibration (promised)"),
    ("delay_minutes_median", "delay median (min)"),
    ("delay_minutes_p90", "delay p90 (min)"),
    ("auc_pr", "AUC-PR of window scores"),
    ("point_precision", "point-wise precision"),
    ("point_recall", "point-wise recall"),
    ("point_f1", "point-wise F1"),
    ("events", "events"),
    ("found", "incidents found"),
)
_DIAGNOSIS_ROWS = (
    ("n", "incidents judged"),
    ("accuracy", "accuracy"),
    ("accuracy_answered", "accuracy of answers given"),
    ("macro_f1", "macro-F1"),
    ("top3_accuracy", "top-3 accuracy"),
    ("abstained", "share abstained (unknown / no_fault)"),
    ("calibration_error", "calibration error (ECE)"),
)


def fmt(x: Any, digits: int = 3) -> str:
    """A figure for a table: '-' for missing, integers as they are."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                             strict=True)))
    return "\n".join([line(header), *map(line, rows)])


def _runs(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, detection) of ftml and of each baseline present."""
    out = [("ftml", report["detection"])]
    base = report.get("baselines") or {}
    out += [(k, base[k]["detection"]) for k in BASELINES if k in base]
    return out


def detection_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    runs = _runs(report)
    header = ["detection", *[n for n, _ in runs]]
    rows = [[label, *[fmt(d.get(key)) for _, d in runs]] for key, label in _DETECTION_ROWS]
    at = [key for key, _ in _DETECTION_ROWS].index("auc_pr") + 1
    rows.insert(at, ["AUC-PR of a random score", *[fmt(dd.get("auc_pr_random"))
                                                   for _, dd in runs]])
    # Point-adjusted F1 rewards one lucky flag per incident: only shown beside random flags.
    rows.append(["point-adjusted F1", *[fmt(dd.get("point_adjusted_f1")) for _, dd in runs]])
    rows.append(["  same, random flags at that rate",
                 *[fmt(dd.get("point_adjusted_f1_random")) for _, dd in runs]])
    return header, rows


def diagnosis_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    diag = report["diagnosis"]
    cols = [("incident_windows", "on incident windows"), ("detected_events", "on detected events")]
    header = ["diagnosis", *[c for _, c in cols]]
    rows = [[label, *[fmt(diag[k].get(key)) for k, _ in cols]] for key, label in _DIAGNOSIS_ROWS]
    fa = diag.get("false_alarms")
    if fa is not None:  # reports from before issue 19 lack these
        rows.append(["false alarms named a cause", "-",
                     f"{fmt(fa['share_named'])} ({fa['named']}/{fa['events']})"])
    unseen = diag.get("unseen_causes")
    if unseen is not None:
        rows.append(["unseen cause answered unknown (training, leave one cause out)",
                     fmt(unseen.get("unknown_rate")), "-"])
    return header, rows


def per_cause_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per cause: precision and recall of the diagnosis, on incident windows and on detected
    events."""
    diag = report["diagnosis"]
    iw, de = (diag[k].get("per_cause", {}) for k in ("incident_windows", "detected_events"))
    header = ["cause", "n (windows)", "precision", "recall", "n (events)", "precision",
              "recall"]
    rows = []
    for c in sorted(set(iw) | set(de)):
        a, b = iw.get(c, {}), de.get(c, {})
        rows.append([c, fmt(a.get("n")), fmt(a.get("precision")), fmt(a.get("recall")),
                     fmt(b.get("n")), fmt(b.get("precision")), fmt(b.get("recall"))])
    return header, rows


def format_text(report: dict[str, Any]) -> str:
    """The report as a few aligned tables for the terminal."""
    d, m = report["data"], report["model"]
    det = report["detection"]
    out = [f"model {m['version']} on {d['entities']} entities, {d['entity_days']:.1f} "
           f"entity-days, {d['incidents']} incidents (an event finds an incident within "
           f"{report['settings']['match_tolerance_minutes']:g} min)", ""]
    warnings = report.get("warnings") or []
    out += [f"warning: {w}" for w in warnings] + ([""] if warnings else [])
    out += [_text_table(*detection_rows(report)), ""]
    out += [_text_table(*diagnosis_rows(report)), ""]
    if per_cause_rows(report)[1]:
        out += [_text_table(*per_cause_rows(report)), ""]
    for key, what in (("detected_events", "detected events"),):
        block = report["diagnosis"][key]
        if block.get("labels"):
            out += [f"confusion on {what} (rows: true cause, columns: diagnosed)",
                    _text_table(["", *block["labels"]],
                                [[lab, *map(str, r)] for lab, r in
                                 zip(block["labels"], block["confusion"], strict=True)]), ""]
    rec = report["recovery"]["incidents"]
    ran = [r for r in rec if r["playbook"]]
    out.append(f"recovery: {det['found']}/{det['incidents']} incidents found; a playbook would "
               f"have run for {len(ran)}" + ("" if report["recovery"]["playbooks"] else
                                              " (no playbooks given)"))
    by_pb = Counter(r["playbook"] for r in ran)
    for name, n in sorted(by_pb.items()):
        out.append(f"  {name}: {n}")
    if report.get("comparison"):
        out += ["", report["comparison"]["summary"]]
        out.append(f"baselines calibrated on {report['baselines']['calibration']}")
    return "\n".join(out)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


# --------------------------------------------------------------------------- HTML


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("the HTML report needs matplotlib, which is not installed",
                          source="--html", hint="pip install 'ftml[report]'") from None
    from matplotlib.figure import Figure

    return Figure


def png_bytes(fig, dpi: int = 80) -> bytes:
    """A figure as PNG bytes (e.g. for ``IPython.display.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _png(fig) -> str:
    return base64.b64encode(png_bytes(fig)).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _as_time(ns: np.ndarray) -> np.ndarray:
    # naive datetimes (UTC) plot fastest and need no tz handling in matplotlib
    return np.asarray(ns, dtype="datetime64[ns]")


def decimate(t: np.ndarray, y: np.ndarray, bins: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """At most ``2 * bins`` points that keep each bin's minimum and maximum, so that spikes
    stay visible while long series draw fast. Missing values stay gaps."""
    n = len(y)
    if n <= 2 * bins:
        return t, y
    size = -(-n // bins)
    pad = size * bins - n
    yp = np.r_[y, np.full(pad, np.nan)].reshape(bins, size)
    tp = np.r_[t, np.repeat(t[-1:], pad)].reshape(bins, size)
    ok = ~np.isnan(yp)
    has = ok.any(axis=1)
    lo = np.where(has, np.argmin(np.where(ok, yp, np.inf), axis=1), 0)
    hi = np.where(has, np.argmax(np.where(ok, yp, -np.inf), axis=1), 0)
    first, second = np.minimum(lo, hi), np.maximum(lo, hi)
    r = np.arange(bins)
    idx = np.column_stack([first, second])
    ty = tp[r[:, None], idx].ravel()
    yy = np.where(has[:, None], yp[r[:, None], idx], np.nan).ravel()
    return ty, yy


def confusion_figure(diag: dict[str, Any], title: str):
    Figure = _require_matplotlib()
    labels, cm = diag["labels"], np.array(diag["confusion"], dtype=float)
    n = max(len(labels), 1)
    fig = Figure(figsize=(1.2 + 0.6 * n, 1.0 + 0.5 * n))
    ax = fig.add_subplot()
    if not len(labels):
        ax.text(0.5, 0.5, "nothing to judge", ha="center", va="center")
        ax.set_axis_off()
        return fig
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("diagnosed")
    ax.set_ylabel("true cause")
    ax.set_title(title, fontsize=10)
    return fig


def timeline_figure(ev: Evaluation):
    """Every entity's window score over time, with the threshold."""
    Figure = _require_matplotlib()
    run = ev.runs["ftml"]
    w = run.windows
    fig = Figure(figsize=(12, 3.2))
    ax = fig.add_subplot()
    ent = w["entity"].astype(str).to_numpy()
    t = to_ns(w["timestamp"])
    s = w["score"].to_numpy(dtype=float)
    for name in pd.unique(ent):  # one line per entity
        m = ent == name
        ax.plot(*decimate(_as_time(t[m]), s[m]), lw=0.6, alpha=0.7)
    for inc in ev.incidents.itertuples(index=False):
        ax.axvspan(_as_time([to_ns([inc.start])[0]])[0], _as_time([to_ns([inc.end])[0]])[0],
                   color="tab:red", alpha=0.12, lw=0)
    ax.axhline(run.threshold, color="black", ls="--", lw=1, label=f"threshold {run.threshold:.3f}")
    ax.set_ylabel("window score")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Window scores of all entities (red: labelled incidents)", fontsize=10)
    return fig


def _panel_entities(ev: Evaluation) -> list[str]:
    run = ev.runs["ftml"]
    weight = Counter(ev.incidents["entity"].astype(str))
    weight.update(e.entity for e in run.events)
    names = [str(e) for e in ev.data.entities]
    return sorted(names, key=lambda n: (-weight.get(n, 0), n))[:MAX_PANELS]


def _panel_metrics(ev: Evaluation, entity: str) -> list[str]:
    counts = Counter(m for e in ev.runs["ftml"].events if e.entity == entity
                     for m in e.top_metrics)
    chosen = [m for m, _ in counts.most_common(PANEL_METRICS)]
    for m in ev.data.metrics:
        if len(chosen) >= PANEL_METRICS:
            break
        if m not in chosen:
            chosen.append(m)
    return chosen


def entity_figure(ev: Evaluation, entity: str):
    """One entity: its score with the threshold, then a few metrics; incidents as red bands,
    detected events as blue bands."""
    Figure = _require_matplotlib()
    run = ev.runs["ftml"]
    metrics = _panel_metrics(ev, entity)
    fig = Figure(figsize=(12, 1.2 + 1.3 * (len(metrics) + 1)))
    axes = fig.subplots(len(metrics) + 1, 1, sharex=True, squeeze=False)[:, 0]
    w = run.windows
    m = (w["entity"].astype(str) == entity).to_numpy()
    axes[0].plot(*decimate(_as_time(to_ns(w["timestamp"][m])), w["score"].to_numpy()[m]),
                 lw=0.7, color="tab:purple")
    axes[0].axhline(run.threshold, color="black", ls="--", lw=0.8)
    axes[0].set_ylabel("score", fontsize=8)
    f = ev.data.frame
    rows = (f["entity"].astype(str) == entity).to_numpy()
    t = _as_time(to_ns(f["timestamp"][rows]))
    for ax, name in zip(axes[1:], metrics, strict=True):
        ax.plot(*decimate(t, f[name].to_numpy(dtype=float)[rows]), lw=0.6, color="tab:gray")
        ax.set_ylabel(name, fontsize=8, rotation=0, ha="right")
    incs = ev.incidents[ev.incidents["entity"].astype(str) == entity]
    spans_inc = list(zip(to_ns(incs["start"]), to_ns(incs["end"]), strict=True))
    spans_ev = [(pd.Timestamp(e.start).value, pd.Timestamp(e.end).value) for e in run.events
                if e.entity == entity]
    for ax in axes:
        for a, b in spans_inc:
            ax.axvspan(_as_time([a])[0], _as_time([b])[0], color="tab:red", alpha=0.18, lw=0)
        for a, b in spans_ev:
            ax.axvspan(_as_time([a])[0], _as_time([b])[0], ymin=0.88, ymax=1.0,
                       color="tab:blue", alpha=0.7, lw=0)
        ax.tick_params(labelsize=7)
    axes[0].set_title(f"{entity}: {len(spans_inc)} incident(s) (red), {len(spans_ev)} event(s) "
                      "(blue), score with threshold (dashed)", fontsize=10)
    return fig


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;
max-width:1300px}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left} thead{background:#f3f3f3}
.note{color:#555;font-size:.9em} img{max-width:100%} .row{display:flex;gap:2em;flex-wrap:wrap}
.warning{color:#a40000}
"""


def _recovery_table(report: dict[str, Any]) -> str:
    header = ["entity", "start", "cause", "found", "diagnosed", "confidence", "playbook",
              "decision", "steps", "outcome"]
    rows = [[r["entity"], r["start"], r["cause"], fmt(r["found"]), fmt(r["diagnosed"]),
             fmt(r["confidence"], 2), fmt(r["playbook"]), fmt(r["decision"]),
             " > ".join(r["steps"]) or "-", fmt(r["outcome"])]
            for r in report["recovery"]["incidents"]]
    return _html_table(header, rows, "recovery")


def render_html(ev: Evaluation) -> str:
    """The whole report as one HTML page with its plots embedded."""
    r = ev.report
    d, m, det = r["data"], r["model"], r["detection"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>ftml evaluation {html.escape(m['version'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>ftml evaluation: model {html.escape(m['version'])}</h1>"]
    # summary
    parts.append('<section id="summary"><h2>Summary</h2>')
    parts.append(f"<p>{d['entities']} entities, {fmt(d['entity_days'], 1)} entity-days "
                 f"({html.escape(str(d['start']))} to {html.escape(str(d['end']))}), "
                 f"{d['incidents']} labelled incidents. An event finds an incident when it is "
                 f"on the same entity and overlaps it within "
                 f"{r['settings']['match_tolerance_minutes']:g} minutes. Threshold "
                 f"{fmt(m['threshold'], 4)} (budget {m['alarm_budget']} false alarms per "
                 f"entity-day).</p>")
    for warning in r.get("warnings") or []:
        parts.append(f"<p class='warning'><b>Warning:</b> {html.escape(warning)}</p>")
    summary = [["event recall", fmt(det["event_recall"])],
               ["event precision", fmt(det["event_precision"])],
               ["event F1", fmt(det["event_f1"])],
               ["false alarms / entity-day", fmt(det["false_alarms_per_entity_day"])],
               ["  same, on calibration (promised)",
                fmt(det.get("calibration_false_alarms_per_entity_day"))],
               ["diagnosis accuracy (detected events)",
                fmt(r["diagnosis"]["detected_events"]["accuracy"])]]
    parts.append(_html_table(["figure", "ftml"], summary))
    if r.get("comparison"):
        parts.append(f"<p><b>{html.escape(r['comparison']['summary'])}</b></p>")
    parts.append("</section>")
    # detection
    parts.append('<section id="detection"><h2>Detection</h2>')
    parts.append(_html_table(*detection_rows(r)))
    parts.append("<p class='note'>Point-wise figures judge each window (positive when its last "
                 "step is inside an incident). Point-adjusted F1 counts a whole incident as "
                 "flagged when one window is; it is shown only beside the same figure for "
                 "random flags raised at the same rate, which reach it as easily.</p>")
    per_cause = [[c, str(s["incidents"]), str(s["found"])]
                 for c, s in det.get("per_cause", {}).items()]
    parts.append(_html_table(["cause", "incidents", "found"], per_cause))
    parts.append("</section>")
    # timeline
    parts.append('<section id="timeline"><h2>Score timeline</h2>')
    parts.append(_img(timeline_figure(ev), "window scores with threshold"))
    parts.append("</section>")
    # diagnosis
    parts.append('<section id="diagnosis"><h2>Diagnosis</h2>')
    parts.append(_html_table(*diagnosis_rows(r)))
    if per_cause_rows(r)[1]:
        parts.append(_html_table(*per_cause_rows(r)))
    parts.append("<div class='row'>")
    parts.append(_img(confusion_figure(r["diagnosis"]["incident_windows"],
                                       "on incident windows"), "confusion matrix"))
    parts.append(_img(confusion_figure(r["diagnosis"]["detected_events"],
                                       "on detected events"), "confusion matrix"))
    parts.append("</div></section>")
    # recovery
    parts.append('<section id="recovery"><h2>Recovery</h2>')
    pb = r["recovery"]["playbooks"]
    parts.append("<p class='note'>For each incident: the event that found it, its diagnosis and "
                 "the playbook that would have run (replayed in dry-run)"
                 + (f" from {html.escape(pb)}" if pb else "; no playbooks were given") +
                 ".</p>")
    parts.append(_recovery_table(r))
    parts.append("</section>")
    # baselines
    parts.append('<section id="baselines"><h2>Baselines</h2>')
    if r.get("baselines"):
        b = r["baselines"]
        parts.append(f"<p>{html.escape(r['comparison']['summary'])}</p>")
        parts.append(f"<p class='note'>Random score and a static per-metric robust z-score "
                     f"threshold, through the same features, event rules and diagnoser, their "
                     f"thresholds calibrated to the same false-alarm budget on "
                     f"{html.escape(b['calibration'])}.</p>")
        rows = [[k, *[fmt(r["comparison"][name].get(k)) for name in BASELINES]]
                for k in r["comparison"][BASELINES[0]]]
        parts.append(_html_table(["ftml minus baseline (positive: ftml better)",
                                  *BASELINES], rows))
    else:
        parts.append("<p class='note'>Not run: pass --baselines.</p>")
    parts.append("</section>")
    # entities
    parts.append('<section id="entities"><h2>Entities</h2>')
    shown = _panel_entities(ev)
    if len(shown) < len(ev.data.entities):
        parts.append(f"<p class='note'>{len(shown)} of {len(ev.data.entities)} entities shown "
                     "(those with the most incidents and events).</p>")
    for name in shown:
        parts.append(f"<div class='entity'>{_img(entity_figure(ev, name), name)}</div>")
    parts.append("</section></body></html>\n")
    return "".join(parts)


def write_html(ev: Evaluation, path: str | Path) -> None:
    _require_matplotlib()
    write_text(path, render_html(ev))
