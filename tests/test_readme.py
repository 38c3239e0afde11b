"""The README's example runs as written, and teaches what ftml is for: a later period of the
fleet it was trained on, scored without a warning and well."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftml.cli import main

ROOT = Path(__file__).resolve().parents[1]


def example_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Example\n+```sh\n(.*?)```", text, flags=re.S).group(1)
    block = re.sub(r"\\\n\s*", " ", block)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readme_example_scores_a_later_period_of_the_training_fleet(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(ROOT)
    runner = CliRunner()
    outputs = {}
    for argv in example_commands():
        assert argv[0] == "ftml"
        args = [a.replace("/tmp/", f"{tmp_path}/").replace("models/fleet",
                                                           str(tmp_path / "models" / "fleet"))
                for a in argv[1:]]
        if args[0] in ("train", "score", "evaluate"):
            args.append("--quiet")
        if args[0] == "evaluate":
            args += ["--out", str(tmp_path / "report.json")]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, (argv, result.output, result.exception)
        outputs[args[0]] = result
    assert {"simulate", "train", "score", "evaluate", "explain"} <= set(outputs)
    for command in ("score", "evaluate"):
        assert "warning" not in outputs[command].stderr, outputs[command].stderr
    detection = json.loads((tmp_path / "report.json").read_text())["detection"]
    assert detection["event_f1"] > 0.75
    assert detection["false_alarms_per_entity_day"] < 0.3
