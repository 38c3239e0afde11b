"""Command line: options -> typed config -> library API; FtmlErrors -> one line, exit 2."""

from __future__ import annotations

import functools
import json
import math
import sys

import click

from ftml import __version__
from ftml.config import Config, load_config
from ftml.errors import FtmlError

EXIT_BAD_INPUT = 2


def _clean_errors(fn):
    """Library errors become one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FtmlError as exc:
            click.echo(f"ftml: error: {exc.one_line()}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            click.echo("ftml: interrupted", err=True)
            sys.exit(130)

    return wrapper


def _read_options(fn):
    """Options of the metric data contract, shared by every command that reads metrics."""
    for opt in reversed([
        click.option("--timestamp-col", help="Name of the timestamp column."),
        click.option("--entity-col", help="Name of the entity column (host, pod, service)."),
        click.option("--step", help="Sampling step, e.g. 60s (default: inferred)."),
        click.option("--exclude", multiple=True, help="Non-numeric column to ignore."),
    ]):
        fn = opt(fn)
    return fn


def _apply_read(config: Config, timestamp_col, entity_col, step, exclude) -> Config:
    r = config.read
    if timestamp_col:
        r.timestamp_col = timestamp_col
    if entity_col:
        r.entity_col = entity_col
    if step:
        r.step = step
    if exclude:
        r.exclude = list(r.exclude) + list(exclude)
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftml")
def main():
    """ftml: detect incidents in metrics, diagnose their cause, recover safely."""


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--entities", default=8, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--days", default=7.0, show_default=True, type=click.FloatRange(0.05, 3650))
@click.option("--step", default="60s", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--start", default="2026-01-05T00:00:00Z", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv",
              show_default=True)
@_clean_errors
def simulate(out, entities, days, step, seed, start, fmt):
    """Simulate a fleet with labelled faults: DIR/metrics.<fmt> and DIR/incidents.csv."""
    from ftml.simulate import write_simulation

    summary = write_simulation(out, format=fmt, entities=entities, days=days, step=step,
                               seed=seed, start=start)
    click.echo(json.dumps(summary, indent=2, default=str))


@main.command()
@click.option("--metrics", "metrics", multiple=True, required=True,
              help="Metric file, directory or glob (repeatable).")
@click.option("--incidents", type=click.Path(dir_okay=False), help="Labelled incidents file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="ftml.yaml")
@click.option("--classifier", type=click.Choice(["tree", "svm", "forest"]))
@click.option("--alarm-budget", type=click.FloatRange(min=0.0),
              help="False alarms per entity per day (default 0.1).")
@click.option("--window", type=click.IntRange(min=2), help="Steps per window (default 15).")
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False), help="rules.yaml")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:PORT, or local[:N] for a "
              "LocalCluster of N workers (needs ftml[dask]; see docs/dask.md).")
@_read_options
@_clean_errors
def train(metrics, incidents, out, config_path, classifier, alarm_budget, window, rules_path,
          quiet, scheduler, timestamp_col, entity_col, step, exclude):
    """Train a model from historical metrics (and incidents) into --out."""
    from ftml import api

    config = _apply_read(load_config(config_path), timestamp_col, entity_col, step, exclude)
    if classifier:
        config.diagnose.classifier = classifier
    if alarm_budget is not None:
        config.detect.alarm_budget = alarm_budget
    if window:
        config.features.window = window
    if scheduler:
        from ftml import distributed

        result = distributed.train(metrics, out, scheduler, incidents=incidents, config=config,
                                   rules=rules_path, quiet=quiet)
    else:
        result = api.train(metrics, out, incidents=incidents, config=config, rules=rules_path,
                           quiet=quiet)
    m = result.manifest
    cal = m["calibration"]
    click.echo(f"model {m['model_version']} -> {out}")
    click.echo(f"  metrics: {len(m['metrics'])}  entities: {m['training']['entities']}  "
               f"rows: {m['training']['rows']}  counters: {', '.join(m['counters']) or '-'}")
    click.echo(f"  threshold {cal['threshold']:.4f}: {cal['false_alarms_per_entity_day']:.3f} "
               f"false alarms per entity-day on calibration (budget {cal['alarm_budget']})")
    if m["causes"]:
        conf = m["min_confidence"]
        click.echo(f"  causes: {', '.join(m['causes'])}" +
                   (f"  (abstains below confidence {conf:.2f})" if conf is not None else ""))
    click.echo(f"  took {m['training']['seconds']} s")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--metrics", "metrics", multiple=True, required=True,
              help="Metric file, directory or glob (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Events file: .jsonl, .csv or .parquet.")
@click.option("--windows-out", type=click.Path(dir_okay=False), help="Per-window scores file.")
@click.option("--playbooks", type=click.Path(dir_okay=False), help="Playbook file (recommend).")
@click.option("--chunk-rows", type=click.IntRange(min=1000), default=1_000_000, show_default=True,
              help="Rows read at a time: bounds memory for large inputs.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--scheduler", help="Run on a Dask cluster: tcp://HOST:PORT, or local[:N] for a "
              "LocalCluster of N workers (needs ftml[dask]; see docs/dask.md).")
@_clean_errors
def score(model_dir, metrics, out, windows_out, playbooks, chunk_rows, quiet, scheduler):
    """Score metric files with a trained model; write one row per event to --out."""
    from ftml import api

    if scheduler:
        from ftml import distributed

        result = distributed.score(model_dir, metrics, scheduler, out=out,
                                   windows_out=windows_out, playbooks=playbooks,
                                   chunk_rows=chunk_rows, quiet=quiet)
    else:
        result = api.score(model_dir, metrics, out=out, windows_out=windows_out,
                           playbooks=playbooks, chunk_rows=chunk_rows, quiet=quiet)
    by_cause: dict[str, int] = {}
    for ev in result.events:
        by_cause[ev.cause] = by_cause.get(ev.cause, 0) + 1
    causes = ", ".join(f"{c}={n}" for c, n in sorted(by_cause.items())) or "-"
    click.echo(f"{len(result.events)} events ({causes}) in {result.windows} windows of "
               f"{result.entities} entities, {result.seconds} s -> {out}")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--metrics", "metrics", multiple=True, required=True,
              help="Metric file, directory or glob of the period to judge (repeatable).")
@click.option("--incidents", required=True, type=click.Path(dir_okay=False),
              help="Labelled incidents of that period.")
@click.option("--out", type=click.Path(dir_okay=False), help="JSON report (keys: "
              "docs/evaluation.md).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="Self-contained HTML report with plots (needs ftml[report]).")
@click.option("--baselines", is_flag=True,
              help="Also judge a random score and a static robust z-score threshold.")
@click.option("--playbooks", type=click.Path(dir_okay=False),
              help="Playbook file: which playbook would have run for each incident.")
@click.option("--calibration-metrics", multiple=True,
              help="Training metrics to calibrate the baselines on (default: the model's "
                   "training files if present).")
@click.option("--calibration-incidents", type=click.Path(dir_okay=False),
              help="Incidents of the calibration metrics.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@_clean_errors
def evaluate(model_dir, metrics, incidents, out, html_out, baselines, playbooks,
             calibration_metrics, calibration_incidents, quiet):
    """Judge a model on labelled data: detection, diagnosis, recovery (and baselines)."""
    from ftml import report
    from ftml.evaluate import evaluate as run_evaluation

    if html_out:
        report._require_matplotlib()  # fail before the work, not after
    ev = run_evaluation(model_dir, metrics, incidents, playbooks=playbooks, baselines=baselines,
                        calibration_metrics=calibration_metrics or None,
                        calibration_incidents=calibration_incidents, quiet=quiet)
    click.echo(report.format_text(ev.report))
    if out:
        report.write_json(ev.report, out)
        click.echo(f"report -> {out}")
    if html_out:
        report.write_html(ev, html_out)
        click.echo(f"html -> {html_out}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@_clean_errors
def explain(model_dir):
    """Print what a model learned: its diagnosis rules, threshold and calibration."""
    from ftml.bundle import load_model

    model = load_model(model_dir)
    m = model.manifest
    click.echo(f"model {m['model_version']}: {len(model.metrics)} metrics, window "
               f"{model.featurizer.window} steps of {model.step}, threshold {model.threshold:.4f}")
    click.echo("features are robust z-scores against each entity's own baseline "
               "(metric:stat)")
    for r in model.rules:
        click.echo(f"rule: {r}")
    if model.diagnoser is None:
        click.echo("no classifier: detection only (causes from rules or 'unknown')")
        return
    d = model.diagnoser
    click.echo(f"diagnosis ({d.classifier}); abstains as 'unknown' below "
               f"confidence {d.min_confidence_:.2f}" +
               (" or far from every training incident of the cause"
                if getattr(d, "open_set", False) else "") + ":")
    if math.isfinite(getattr(d, "unseen_unknown_rate_", math.nan)):
        click.echo(f"  a cause never seen in training was answered unknown "
                   f"{d.unseen_unknown_rate_:.0%} of the time (leave one cause out)")
    click.echo(model.diagnoser.explain(model.featurizer.feature_names_))


@main.group()
def playbook():
    """Check playbook files and replay them over history."""


@playbook.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@_clean_errors
def playbook_check(file):
    """Validate a playbook file and print cause -> steps."""
    from ftml.playbooks import validate

    _, text = validate(file)
    click.echo(text)


@playbook.command("replay")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--metrics", "metrics", multiple=True, required=True)
@click.option("--playbooks", required=True, type=click.Path(dir_okay=False))
@click.option("--incidents", type=click.Path(dir_okay=False))
@_clean_errors
def playbook_replay(model_dir, metrics, playbooks, incidents):
    """Score history and run the engine over it in dry-run: what would have run, and when."""
    from ftml import api
    from ftml.bundle import load_model
    from ftml.io import read_incidents, read_metrics
    from ftml.playbooks import load_playbooks
    from ftml.recover import replay

    model = load_model(model_dir)
    book = load_playbooks(playbooks, known_metrics=model.metrics)
    result = api.score(model, metrics, playbooks=playbooks)
    data = read_metrics(metrics, model.config.read, model.metrics)
    inc = read_incidents(incidents, data.entities) if incidents else None
    out = replay(result.events, data.frame, book, incidents=inc, model_version=model.version)
    click.echo(out.format())


@main.command()
@click.argument("approval_id")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="State folder of the engine (holds state.db).")
@click.option("--playbooks", type=click.Path(dir_okay=False),
              help="Run the approved action here and now (else the owning loop runs it).")
@click.option("--by", help="Who approves (recorded in the audit).")
@_clean_errors
def approve(approval_id, state_dir, playbooks, by):
    """Approve a pending recovery action."""
    from ftml import recover

    if playbooks:
        from ftml.playbooks import load_playbooks

        engine = recover.RecoveryEngine(load_playbooks(playbooks), state_dir=state_dir)
        try:
            decision = engine.approve(approval_id, by=by)
        finally:
            engine.close()
        click.echo(f"{approval_id}: {decision.decision} ({decision.reason})")
        return
    _, line = recover.approve(state_dir, approval_id, by=by)
    click.echo(line)


@main.command()
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False),
              help="State folder (holds state.db).")
@click.option("--since", help="A time (ISO 8601) or a duration such as 2h.")
@click.option("--entity", help="Only this entity.")
@_clean_errors
def audit(state_dir, since, entity):
    """Print the audit log of recovery decisions and actions."""
    from ftml.audit import audit_table

    _, text = audit_table(state_dir, since=since, entity=entity)
    click.echo(text)


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--source", "sources", multiple=True, required=True,
              help="file:PATH | stdin | local | prometheus:URL (repeatable).")
@click.option("--playbooks", type=click.Path(dir_okay=False), help="Recovery playbooks.")
@click.option("--mode", type=click.Choice(["dry-run", "approve", "auto"]), default="dry-run",
              show_default=True, help="How recovery acts (overrides the playbook file).")
@click.option("--sink", "sinks", multiple=True,
              help="stdout | jsonl:PATH | webhook:URL | alertmanager:URL (repeatable; "
                   "default stdout).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="State folder: checkpoints, alert queue, recovery database.")
@click.option("--interval", help="Time between ticks, e.g. 60s (default: the model's step).")
@click.option("--listen", help="Serve /metrics and /healthz on HOST:PORT.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="ftml.yaml; its 'watch:' section configures sources and the loop.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@_clean_errors
def watch(model_dir, sources, playbooks, mode, sinks, state_dir, interval, listen,
          config_path, log_level):
    """Watch live metrics: detect, diagnose, alert and recover, until SIGTERM / SIGINT."""
    import logging
    import signal

    from ftml.bundle import load_model
    from ftml.config import parse_duration
    from ftml.sinks import make_sink
    from ftml.sources import make_source, source_config
    from ftml.watch import WatchConfig, Watcher, parse_listen

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = load_model(model_dir)
    config = load_config(config_path)
    section = config.extra.get("watch") or model.config.extra.get("watch") or {}
    where = config_path or "model config"
    wcfg = WatchConfig.from_section(section, where)
    if interval:
        wcfg.interval = parse_duration(interval, "--interval").total_seconds()
    scfg = source_config(section, where)
    srcs = [make_source(s, model.config.read, scfg, model.metrics) for s in sources]
    snks = [make_sink(s) for s in (sinks or ("stdout",))]
    address = parse_listen(listen) if listen else None
    engine = None
    if playbooks:
        from ftml.playbooks import load_playbooks
        from ftml.recover import RecoveryEngine

        engine = RecoveryEngine(load_playbooks(playbooks, known_metrics=model.metrics),
                                state_dir=state_dir, mode=mode.replace("-", "_"),
                                model_version=model.version)
    watcher = Watcher(model, srcs, snks, engine=engine, state_dir=state_dir, config=wcfg)

    def stop(signum, frame):
        # No logging here: the handler may interrupt a log write, and a re-entrant write
        # raises, losing the stop. The loop logs the reason as it shuts down.
        watcher.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        watcher.run(listen=address)
    finally:
        if engine is not None:
            engine.close()


if __name__ == "__main__":
    main()
