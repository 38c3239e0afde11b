"""Command line: options -> typed config -> library API; FtmlErrors -> one line, exit 2."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import sys

import click

from ftml import __version__
from ftml.config import Config, load_config
from ftml.errors import FtmlError

EXIT_BAD_INPUT = 2


class _HeldNotes(logging.Handler):
    """The library's notes (e.g. "model bundle is unsigned") held while a command starts:
    a command that fails then says one line, its error; one that goes on prints them
    (:meth:`let_go`), once."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger("ftml")
        self.propagate = self.logger.propagate

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def hold(self) -> _HeldNotes:
        self.logger.addHandler(self)
        self.logger.propagate = False
        return self

    def let_go(self, show: bool = True) -> None:
        # (not `release`: logging.Handler's lock method has that name)
        if self not in self.logger.handlers:
            return
        self.logger.removeHandler(self)
        self.logger.propagate = self.propagate
        for record in self.records if show else ():
            logging.getLogger(record.name).handle(record)
        self.records = []


_notes: _HeldNotes | None = None


def _release_notes() -> None:
    if _notes is not None:
        _notes.let_go()


def _clean_errors(fn):
    """Library errors become one line on stderr and exit code 2, never a traceback (notes
    logged before the error are dropped, so the error stands alone)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _notes
        _notes = _HeldNotes().hold()
        try:
            out = fn(*args, **kwargs)
        except FtmlError as exc:
            _notes.let_go(show=False)
            click.echo(f"ftml: error: {exc.one_line()}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            _notes.let_go(show=False)
            click.echo("ftml: interrupted", err=True)
            sys.exit(130)
        except BaseException:
            _notes.let_go()
            raise
        _notes.let_go()
        return out

    return wrapper


def _warn(line: str | None) -> None:
    """A warning: one line on stderr (what ftml did about the data, and did not fail on)."""
    if line:
        click.echo(f"ftml: warning: {line}", err=True)


def _read_options(fn):
    """Options of the metric data contract, shared by every command that reads metrics. A
    model remembers the ones it was trained with; given to a command that loads a model, they
    override them."""
    for opt in reversed([
        click.option("--timestamp-col", help="Name of the timestamp column."),
        click.option("--entity-col", help="Name of the entity column (host, pod, service)."),
        click.option("--step", help="Sampling step, e.g. 60s (default: inferred; a model's "
                                    "own step when scoring)."),
        click.option("--exclude", multiple=True, help="Non-numeric column to ignore."),
        click.option("--entity-map", help="Regex mapping entity names to stable ones (its "
                     "group 'entity' or its one group), e.g. '^(.+)-[0-9a-f]{8,10}-[0-9a-z]{5}$' "
                     "for Kubernetes pods; the model keeps it for score and watch."),
    ]):
        fn = opt(fn)
    return fn


def _log_options(fn):
    """Log files beside the metrics (ftml.logs): their per-entity series join the metrics. A
    model trained with logs remembers how it read them; given here, they override that."""
    for opt in reversed([
        click.option("--logs", "log_paths", multiple=True,
                     help="Log file, directory or glob (repeatable): its lines become "
                          "series per entity and step (lines, errors, templates)."),
        click.option("--log-format", help="Log format: python, iso, kubectl, syslog, access, "
                     "apache-error, jsonl, journald, or a regex with named groups ts and msg "
                     "(and level, entity, status); default: detected per file."),
        click.option("--log-entity-from", help="Entity from the log file's path, e.g. "
                     "'pods/{entity}/*.log' (default: the format's field, else the file name)."),
        click.option("--log-entity", help="The entity of every log line."),
    ]):
        fn = opt(fn)
    return fn


def _log_input(log_paths, log_format, log_entity_from, log_entity):
    """The --logs options as the API takes them (None: no logs)."""
    if not log_paths:
        if log_format or log_entity_from or log_entity:
            from ftml.errors import InputError

            raise InputError("log options without --logs", where="--log-format",
                             hint="pass --logs PATH with them")
        return None
    from ftml.logs import LogInput

    return LogInput(list(log_paths), log_format, log_entity_from, log_entity)


def _key_option(verb: str):
    return click.option("--sign-key-file", "key_file", type=click.Path(dir_okay=False),
                        help=f"File holding the key that {verb} the bundle with an HMAC "
                             "(default: env FTML_MODEL_KEY; without either, unsigned).")


def _load_model(model_dir, key_file):
    """The bundle, verified with the key of --sign-key-file or FTML_MODEL_KEY if given."""
    from ftml.bundle import load_model, model_key

    return load_model(model_dir, key=model_key(key_file))


_BARE_NUMBER = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def _step_with_unit(step: str) -> str:
    """'60' -> '60s', said on stderr: a bare number is read as seconds, and the user should
    know which unit was assumed."""
    if _BARE_NUMBER.match(step):
        click.echo(f"ftml: note: --step {step.strip()} has no unit: read as {step.strip()}s "
                   "(seconds)", err=True)
        return f"{step.strip()}s"
    return step


def _apply_read(config: Config, timestamp_col, entity_col, step, exclude,
                entity_map=None) -> Config:
    r = config.read
    if entity_map:
        r.entity_map = entity_map
    if timestamp_col:
        r.timestamp_col = timestamp_col
    if entity_col:
        r.entity_col = entity_col
    if step:
        r.step = _step_with_unit(step)
    if exclude:
        r.exclude = list(r.exclude) + list(exclude)
    return config


def _model_with_read(model_dir, timestamp_col, entity_col, step, exclude, key_file=None,
                     entity_map=None):
    """The model of ``model_dir`` (verified with the key of --sign-key-file or FTML_MODEL_KEY
    if given) reading as it was trained to, but for the options given."""
    import dataclasses

    from ftml.config import parse_duration
    from ftml.errors import InputError

    model = _load_model(model_dir, key_file)
    if step:
        step = _step_with_unit(step)
        try:
            wanted = parse_duration(step, "step")
        except FtmlError as exc:
            raise InputError(exc.problem, where="--step", hint=exc.hint) from None
        if wanted != model.step:
            # Its windows, baselines and threshold are counted in its own steps.
            raise InputError(f"--step {step} differs from the model's step "
                             f"{model.step.total_seconds():g}s",
                             where="--step", hint="leave --step out: the model reads at its "
                                                  "own step")
    if timestamp_col or entity_col or exclude or entity_map:
        config = dataclasses.replace(model.config, read=dataclasses.replace(model.config.read))
        _apply_read(config, timestamp_col, entity_col, None, exclude, entity_map)
        model = dataclasses.replace(model, config=config)
    return model


def _warn_on_fit(model, result) -> None:
    """Entities the model never saw, and a share of windows flagged far above its
    calibration's: one line each on stderr."""
    from ftml.bundle import misfit_warning
    from ftml.pipeline import unseen_entities_warning

    found = [unseen_entities_warning(model, result.unseen, result.entities),
             misfit_warning(model, result.flagged, result.windows)]
    for warning in filter(None, found):
        click.echo(f"ftml: warning: {warning}", err=True)


def _warn_on_causes(book, model) -> None:
    """Playbooks for causes the model never names, or causes without playbook: said on
    stderr (``playbook check --model`` refuses the first)."""
    from ftml.playbooks import check_causes

    try:
        warnings = check_causes(book, model.causes)
    except FtmlError as exc:
        warnings = [exc.one_line()]
    for warning in warnings:
        click.echo(f"ftml: warning: {warning}", err=True)


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
@click.option("--test-days", type=click.FloatRange(0.05, 3650),
              help="Split: also simulate the N days after --days, same fleet, new faults and "
                   "noise; --days go to DIR/train/, these to DIR/test/.")
@click.option("--world", default=0, show_default=True, type=click.IntRange(0, 4),
              help="0: this simulator; 1: heavy-tailed, heteroscedastic noise; 2: weekly cycle "
                   "and a nightly batch job; 3: scale in/out and renamed pods; 4: all of them.")
@click.option("--logs", "logs", is_flag=True,
              help="Also write DIR/logs/<entity>.log, application logs (Python logging format) "
                   "that follow the metrics and faults (world 0 only).")
@_clean_errors
def simulate(out, entities, days, step, seed, start, fmt, test_days, world, logs):
    """Simulate a fleet with labelled faults: DIR/metrics.<fmt> and DIR/incidents.csv (with
    --test-days: DIR/train/ and DIR/test/, a later period of the same fleet to score)."""
    from ftml.simulate import write_simulation, write_split_simulation

    if test_days:
        summary = write_split_simulation(out, test_days=test_days, format=fmt,
                                         entities=entities, days=days, step=step, seed=seed,
                                         start=start, world=world, logs=logs)
    else:
        summary = write_simulation(out, format=fmt, entities=entities, days=days, step=step,
                                   seed=seed, start=start, world=world, logs=logs)
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
@click.option("--log-templates", type=click.IntRange(min=0),
              help="Log templates with a series of their own (log:tpl:<id>), the most "
                   "frequent of training first (default 0: lines, errors, warnings and "
                   "unseen templates only; see docs/logs.md).")
@_key_option("signs")
@_read_options
@_log_options
@_clean_errors
def train(metrics, incidents, out, config_path, classifier, alarm_budget, window, rules_path,
          quiet, scheduler, log_templates, key_file, timestamp_col, entity_col, step, exclude,
          entity_map, log_paths, log_format, log_entity_from, log_entity):
    """Train a model from historical metrics (and incidents) into --out."""
    from ftml import api
    from ftml.bundle import model_key

    key = model_key(key_file)  # before the work: a missing key file fails at once
    logs = _log_input(log_paths, log_format, log_entity_from, log_entity)
    log_config = None
    if log_templates is not None:
        if logs is None:
            from ftml.errors import InputError

            raise InputError("--log-templates without --logs", where="--log-templates",
                             hint="pass --logs PATH with it")
        from ftml.config import LogConfig

        log_config = LogConfig(top_templates=log_templates)

    config = _apply_read(load_config(config_path), timestamp_col, entity_col, step, exclude,
                         entity_map)
    if classifier:
        config.diagnose.classifier = classifier
    if alarm_budget is not None:
        config.detect.alarm_budget = alarm_budget
    if window:
        config.features.window = window
    result = api.train(metrics, out, incidents=incidents, config=config, rules=rules_path,
                       quiet=quiet, sign_key=key, scheduler=scheduler or None, logs=logs,
                       log_config=log_config)
    from ftml.pipeline import dropped_warning

    m = result.manifest
    _warn(dropped_warning(m.get("dropped_metrics") or {}))
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
    if result.model.logs is not None:
        lm = result.model.logs
        click.echo(f"  logs: {len(lm.templates)} templates, {len(lm.known_ids)} known, "
                   f"series {', '.join(lm.metrics)}")
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
@click.option("--topology", type=click.Path(dir_okay=False),
              help="Call graph CSV (source,target[,weight]) to group and rank incidents by.")
@click.option("--groups-out", type=click.Path(dir_okay=False),
              help="Incident groups file (.jsonl, .csv, .parquet): one row per group.")
@_read_options
@_log_options
@_key_option("verifies")
@_clean_errors
def score(model_dir, metrics, out, windows_out, playbooks, chunk_rows, quiet, scheduler,
          timestamp_col, entity_col, step, exclude, key_file, topology, groups_out,
          entity_map, log_paths, log_format, log_entity_from, log_entity):
    """Score metric files with a trained model; write one row per event to --out."""
    from ftml import api

    logs = _log_input(log_paths, log_format, log_entity_from, log_entity)
    model = _model_with_read(model_dir, timestamp_col, entity_col, step, exclude, key_file,
                             entity_map)
    if playbooks:
        from ftml.playbooks import load_playbooks

        _warn_on_causes(load_playbooks(playbooks, known_metrics=model.metrics), model)
    result = api.score(model, metrics, out=out, windows_out=windows_out,
                       playbooks=playbooks, chunk_rows=chunk_rows, quiet=quiet,
                       scheduler=scheduler or None, topology=topology,
                       groups_out=groups_out, logs=logs)
    _warn_on_fit(model, result)
    by_cause: dict[str, int] = {}
    for ev in result.events:
        by_cause[ev.cause] = by_cause.get(ev.cause, 0) + 1
    causes = ", ".join(f"{c}={n}" for c, n in sorted(by_cause.items())) or "-"
    click.echo(f"{len(result.events)} events ({causes}) in {len(result.groups)} incident "
               f"groups, {result.windows} windows of {result.entities} entities, "
               f"{result.seconds} s -> {out}")
    _say_log_templates(model, result.events)


def _say_log_templates(model, events) -> None:
    """The log templates events name among their top metrics, as text: one line each."""
    if getattr(model, "logs", None) is None:
        return
    named = sorted({m for ev in events for m in ev.top_metrics if m.startswith("log:tpl:")})
    for m in named:
        click.echo(f"  {m} = {model.logs.describe(m)}")


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
@click.option("--topology", type=click.Path(dir_okay=False),
              help="Call graph CSV (source,target[,weight]) to group and rank incidents by.")
@_read_options
@_log_options
@_key_option("verifies")
@_clean_errors
def evaluate(model_dir, metrics, incidents, out, html_out, baselines, playbooks,
             calibration_metrics, calibration_incidents, quiet, timestamp_col, entity_col, step,
             exclude, key_file, topology, entity_map, log_paths, log_format, log_entity_from,
             log_entity):
    """Judge a model on labelled data: detection, diagnosis, recovery (and baselines)."""
    from ftml import report
    from ftml.evaluate import evaluate as run_evaluation

    if html_out:
        report._require_matplotlib()  # fail before the work, not after
    logs = _log_input(log_paths, log_format, log_entity_from, log_entity)
    model = _model_with_read(model_dir, timestamp_col, entity_col, step, exclude, key_file,
                             entity_map)
    ev = run_evaluation(model, metrics, incidents, playbooks=playbooks, baselines=baselines,
                        calibration_metrics=calibration_metrics or None,
                        calibration_incidents=calibration_incidents, quiet=quiet,
                        topology=topology, logs=logs)
    for warning in ev.report.get("warnings") or []:
        click.echo(f"ftml: warning: {warning}", err=True)
    click.echo(report.format_text(ev.report))
    if out:
        report.write_json(ev.report, out)
        click.echo(f"report -> {out}")
    if html_out:
        report.write_html(ev, html_out)
        click.echo(f"html -> {html_out}")


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@_key_option("verifies")
@_clean_errors
def explain(model_dir, key_file):
    """Print what a model learned: its diagnosis rules, threshold and calibration."""
    model = _load_model(model_dir, key_file)
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
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="Check causes and verify metrics against what this model names and reads.")
@_clean_errors
def playbook_check(file, model_dir):
    """Validate a playbook file and print cause -> steps; warn on exec programs missing."""
    from ftml.playbooks import check_causes, check_programs, validate

    model = None
    if model_dir:
        from ftml.bundle import load_model

        model = load_model(model_dir)
    book, text = validate(file, known_metrics=model.metrics if model is not None else None)
    warnings = check_causes(book, model.causes) if model is not None else []
    warnings += check_programs(book)
    click.echo(text)
    for warning in warnings:
        click.echo(f"ftml: warning: {warning}", err=True)


@playbook.command("replay")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--metrics", "metrics", multiple=True, required=True)
@click.option("--playbooks", required=True, type=click.Path(dir_okay=False))
@click.option("--incidents", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["dry_run", "dry-run", "approve", "auto"]),
              help="Decide as watch --mode does (default: the playbook file's modes).")
@_read_options
@_key_option("verifies")
@_clean_errors
def playbook_replay(model_dir, metrics, playbooks, incidents, mode, timestamp_col, entity_col,
                    step, exclude, key_file, entity_map):
    """Score history and run the engine over it: what it would have decided, and what each
    playbook would have achieved with actions that succeed at once."""
    from ftml import api
    from ftml.io import read_incidents, read_metrics
    from ftml.playbooks import load_playbooks
    from ftml.recover import replay

    model = _model_with_read(model_dir, timestamp_col, entity_col, step, exclude, key_file,
                             entity_map)
    book = load_playbooks(playbooks, known_metrics=model.metrics)
    _warn_on_causes(book, model)
    result = api.score(model, metrics, playbooks=playbooks)
    _warn_on_fit(model, result)
    data = read_metrics(metrics, model.config.read, model.metrics)
    inc = read_incidents(incidents, data.entities, model.config.read) if incidents else None
    out = replay(result.events, data.frame, book, incidents=inc, model_version=model.version,
                 mode=mode)
    click.echo(out.format())


@main.group("logs")
def logs_group():
    """What a model learned from logs."""


@logs_group.command("templates")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--all", "show_all", is_flag=True,
              help="Every template mined, not only the known ones.")
@_key_option("verifies")
@_clean_errors
def logs_templates(model_dir, show_all, key_file):
    """List the log templates a model knows: id, lines in training, series, text."""
    model = _load_model(model_dir, key_file)
    lm = getattr(model, "logs", None)
    if lm is None:
        from ftml.errors import ModelError

        raise ModelError("the model was trained without logs", source=str(model_dir),
                         hint="train with --logs to mine log templates")
    known = {int(t) for t in lm.known_ids}
    series = {m for m in model.metrics if m.startswith("log:")}
    click.echo(f"{len(lm.templates)} templates mined, {len(known)} known (seen on at least "
               f"{lm.config.known_min_steps} steps); series: {', '.join(sorted(series))}")
    click.echo(f"{'id':>6} {'lines':>10}  {'series':<14} template")
    rows = sorted(((int(t), n) for t, n in lm.counts.items()), key=lambda r: (-r[1], r[0]))
    for cid, n in rows:
        if cid not in known and not show_all:
            continue
        name = f"log:tpl:{cid}"
        tag = name if name in series else ("-" if cid in known else "(rare)")
        click.echo(f"{cid:>6} {n:>10}  {tag:<14} {lm.templates.text(cid)}")


@main.group("model")
def model_group():
    """Manage model bundles."""


@model_group.command("convert")
@click.argument("model_dir", type=click.Path(file_okay=False))
@_key_option("signs")
@_clean_errors
def model_convert(model_dir, key_file):
    """Rewrite an old pickle bundle (model.joblib) as data only, in place. This UNPICKLES
    model.joblib once, which runs any code in it: only for a bundle you trust."""
    from ftml.bundle import LEGACY_FILE, convert_legacy, model_key

    def warn() -> None:
        click.echo(f"ftml: warning: converting {model_dir} unpickles its {LEGACY_FILE}, which "
                   "runs any code in it: do this only for a bundle you trust", err=True)

    m = convert_legacy(model_dir, key=model_key(key_file), before_unpickle=warn)
    signed = "signed" if isinstance(m["signature"], dict) else "unsigned"
    click.echo(f"model {m['model_version']} -> {model_dir} (format {m['format_version']}, "
               f"{signed}; {LEGACY_FILE} removed)")


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
@click.option("--source", "source", required=True,
              help="local | prometheus:URL | file:PATH | stdin, as for watch.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="The record: a CSV in the metric contract.")
@click.option("--for", "duration", help="Record from now on for this long, e.g. 2h.")
@click.option("--since", help="A past range from: a time (ISO 8601) or a duration ago (2h).")
@click.option("--until", help="The past range's end (default: now).")
@click.option("--step", default="60s", show_default=True,
              help="One sample per entity and step (train and watch then use this step).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="ftml.yaml; its 'watch:' section (queries, entity label, processes) is "
                   "the one watch will use.")
@click.option("--quiet", is_flag=True, help="No summary line.")
@_clean_errors
def record(source, out, duration, since, until, step, config_path, quiet):
    """Record a watch source as training history (CSV), for train, then watch on the same."""
    import logging
    import signal

    from ftml.record import record as run_record

    logging.basicConfig(level="WARNING", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)

    def stop(signum, frame):  # ends a --for recording early, keeping its rows
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    summary = run_record(source, out, step=step, duration=duration, since=since, until=until,
                         section=config.extra.get("watch"),
                         config_source=config_path or "config", read=config.read)
    if not quiet:
        click.echo(summary.line())


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False))
@click.option("--source", "sources", multiple=True, required=True,
              help="file:PATH | stdin | local | prometheus:URL (repeatable).")
@click.option("--playbooks", type=click.Path(dir_okay=False), help="Recovery playbooks.")
@click.option("--mode", type=click.Choice(["dry_run", "dry-run", "approve", "auto"]),
              default="dry_run", show_default=True,
              help="How recovery acts (overrides the playbook file); dry-run is dry_run.")
@click.option("--sink", "sinks", multiple=True,
              help="stdout | jsonl:PATH | webhook:URL | alertmanager:URL (repeatable; "
                   "default stdout).")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="State folder: checkpoints, alert queue, recovery database.")
@click.option("--interval", help="Time between ticks, e.g. 60s (default: the model's step).")
@click.option("--listen", help="Serve /metrics and /healthz on HOST:PORT.")
@click.option("--wait-for-source", is_flag=True,
              help="A source that cannot be read at start is retried (default: exit 2).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="ftml.yaml; its 'watch:' section configures sources and the loop.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--topology", type=click.Path(dir_okay=False),
              help="Call graph CSV (source,target[,weight]) to group and rank incidents by.")
@_read_options
@_key_option("verifies")
@_clean_errors
def watch(model_dir, sources, playbooks, mode, sinks, state_dir, interval, listen,
          wait_for_source, config_path, log_level, timestamp_col, entity_col, step, exclude,
          key_file, topology, entity_map):
    """Watch live metrics: detect, diagnose, alert and recover, until SIGTERM / SIGINT."""
    import logging

    from ftml import api
    from ftml.config import parse_duration
    from ftml.sources import source_config
    from ftml.watch import WatchConfig

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(config_path)
    section = config.extra.get("watch")
    if section is not None:  # the user's own: checked before any model work
        WatchConfig.from_section(section, config_path)
        source_config(section, config_path)
    if topology:
        from ftml.incidents import load_topology

        load_topology(topology)  # a bad call graph fails now, not after loading the model
    model = _model_with_read(model_dir, timestamp_col, entity_col, step, exclude, key_file,
                             entity_map)
    api.watch(model, sources, sinks=sinks or ("stdout",), playbooks=playbooks, mode=mode,
              state_dir=state_dir, section=section, section_source=config_path or "config",
              interval=parse_duration(interval, "--interval").total_seconds() if interval
              else None, wait_for_source=wait_for_source, listen=listen, topology=topology,
              started=_release_notes)


if __name__ == "__main__":
    main()
