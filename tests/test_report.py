"""Reports: the text summary, the JSON file and the HTML page, which must render in a real
browser (headless Chromium, installed here when missing)."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ftml import api, report
from ftml.errors import ConfigError
from ftml.evaluate import evaluate
from ftml.simulate import write_simulation

T0 = pd.Timestamp("2026-01-05T00:00:00Z")
CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reportfleet")
    write_simulation(tmp / "train", entities=2, days=3, seed=5, start=str(T0))
    write_simulation(tmp / "test", entities=2, days=1, seed=1005, fleet_seed=5,
                     start=str(T0 + pd.Timedelta(days=3)))
    api.train([tmp / "train" / "metrics.csv"], tmp / "model",
              incidents=tmp / "train" / "incidents.csv")
    return evaluate(tmp / "model", [tmp / "test" / "metrics.csv"],
                    tmp / "test" / "incidents.csv", baselines=True,
                    calibration_metrics=[tmp / "train" / "metrics.csv"],
                    calibration_incidents=tmp / "train" / "incidents.csv")


@pytest.fixture(scope="module")
def html_file(evaluation, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "report.html"
    report.write_html(evaluation, path)
    return path


@pytest.mark.parametrize("value, text", [
    (None, "-"), (float("nan"), "-"), (3, "3"), (0.12345, "0.123"), (True, "yes"), ("x", "x"),
])
def test_fmt(value, text):
    assert report.fmt(value) == text


def test_decimate_keeps_extremes_and_short_series():
    t = np.arange(10_000)
    y = np.sin(t / 50.0)
    y[4321] = 9.0
    tt, yy = report.decimate(t, y, bins=100)
    assert len(yy) == 200 and np.nanmax(yy) == 9.0 and np.nanmin(yy) == pytest.approx(y.min())
    assert np.all(np.diff(tt) >= 0)
    short_t, short_y = report.decimate(t[:50], y[:50], bins=100)
    assert np.array_equal(short_y, y[:50])


def test_text_summary_has_all_runs_and_pa_f1_beside_random(evaluation):
    text = report.format_text(evaluation.report)
    for word in ("event recall", "false alarms / entity-day", "AUC-PR", "macro-F1",
                 "top-3 accuracy", "random", "robust_z", "IsolationForest is"):
        assert word in text
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("point-adjusted F1"))
    assert "random flags" in lines[i + 1]


def test_calibration_false_alarms_stand_beside_the_judged_ones(evaluation):
    r = evaluation.report
    promised = r["detection"]["calibration_false_alarms_per_entity_day"]
    manifest = evaluation.model.manifest["calibration"]["false_alarms_per_entity_day"]
    assert promised == pytest.approx(manifest)
    for kind in ("random", "robust_z"):
        assert r["baselines"][kind]["detection"]["calibration_false_alarms_per_entity_day"] == \
            pytest.approx(r["baselines"][kind]["calibration_false_alarms_per_entity_day"])
    lines = report.format_text(r).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("false alarms / entity-day"))
    assert lines[i + 1].strip().startswith("same, on calibration (promised)")
    assert report.fmt(promised) in lines[i + 1]
    j = next(k for k, line in enumerate(lines) if line.startswith("AUC-PR of window scores"))
    assert lines[j + 1].startswith("AUC-PR of a random score")


def test_json_report_round_trips(evaluation, tmp_path):
    path = tmp_path / "r.json"
    report.write_json(evaluation.report, path)
    assert json.loads(path.read_text()) == evaluation.report


def test_html_is_self_contained_with_every_section(html_file):
    page = html_file.read_text()
    for sid, _ in report.SECTIONS:
        assert f'<section id="{sid}">' in page
    assert not re.search(r"(src|href)=\"(https?:|//)", page), "no network fetches"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4  # timeline, two confusion matrices, entity panels
    assert all(base64.b64decode(i)[:8] == PNG_MAGIC for i in images)


def test_html_without_baselines_or_playbooks_still_has_every_section(evaluation, tmp_path):
    plain = evaluate(evaluation.model, evaluation.report["data"]["sources"],
                     evaluation.incidents)
    page = report.render_html(plain)
    for sid, _ in report.SECTIONS:
        assert f'<section id="{sid}">' in page
    assert "Not run: pass --baselines" in page and "no playbooks were given" in page


def test_html_needs_matplotlib_and_says_how_to_get_it(evaluation, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"ftml\[report\]"):
        report.write_html(evaluation, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# --------------------------------------------------------------------------- real browser


def _skip(reason: str):
    print(f"\nSKIPPED browser test: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed with apt when missing (tests run as root on CI)."""
    if shutil.which("chromium") is None and not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            _skip("chromium is missing and there is no apt-get to install it")
        try:
            subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
                           "apt-get install -y -qq chromium", shell=True, check=True,
                           capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            tail = getattr(exc, "stderr", b"") or b""
            _skip(f"could not install chromium with apt-get: {exc}; "
                  f"{tail.decode(errors='replace')[-300:]}")
    return shutil.which("chromium") or CHROMIUM


def _chromium(binary, profile, *args, timeout=120):
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)


@pytest.mark.integration
def test_html_renders_in_headless_chromium(chromium, html_file, tmp_path):
    shot = tmp_path / "shot.png"
    res = _chromium(chromium, tmp_path / "profile-a", f"--screenshot={shot}",
                    "--window-size=1280,2000", html_file.as_uri())
    assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000  # a real page, not a blank
    dom = _chromium(chromium, tmp_path / "profile-b", "--dump-dom", html_file.as_uri())
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    text = dom.stdout.decode()
    for sid, title in report.SECTIONS:
        assert f'id="{sid}"' in text and title in text
    assert text.count("<img") >= 4
