"""`kdbench report`: files written and well-formed, logged to MLflow, HTML rendered by headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from PIL import Image

from kdbench.cli import cli
from kdbench.core.host import reset_host

FAST = ["--datasets", "glyphs(num_train=192,num_test=96)", "--epochs", "2", "--batch-size", "32"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture
def report_dir(kdbench_env):
    reset_host()
    run = CliRunner().invoke(cli, ["run", *FAST, "--seeds", "0,1"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    reset_host()
    out = kdbench_env / "leaderboards" / "default"
    result = CliRunner().invoke(cli, ["report", "default", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_report_files_are_written_and_well_formed(report_dir):
    names = {p.name for p in report_dir.iterdir()}
    assert {"README.md", "results.csv", "results.json", "index.html", "accuracy_per_method.png",
            "training_curves.png", "accuracy_vs_latency_cpu_fp32.png"} <= names

    cells = pd.read_csv(report_dir / "results.csv")
    assert len(cells) == 4 and set(cells["method"]) == {"baseline", "kd"} and set(cells["seed"]) == {0, 1}
    assert (cells["status"] == "FINISHED").all() and cells["top1"].between(0, 100).all()
    assert json.loads((report_dir / "results.json").read_text())[0]["spec_hash"]
    for png in report_dir.glob("*.png"):
        with Image.open(png) as img:
            assert img.width > 300 and img.height > 200

    readme = (report_dir / "README.md").read_text()
    assert "scored at the last epoch (epoch 2" in readme and "over 2 seed(s) (0, 1)" in readme
    assert "## Provenance" in readme and "kdbench run default --seeds 0,1" in readme
    assert re.search(r"\| [12] \| glyphs\(num_test=96,num_train=192\) \| tiny \| kd \| 2 \| \d+\.\d\d ± \d+\.\d\d \|", readme)
    assert "![Training curves](training_curves.png)" in readme
    assert "## Pairwise comparisons and rank intervals" in readme and "| A | B | pairs | Δ (A − B) |" in readme
    assert "p Holm" in readme and "smallest difference a two-sided paired t-test detects" in readme

    client = MlflowClient()
    exp = client.get_experiment_by_name("kdbench/default")
    (report_run,) = client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'report'")
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert "report/index.html" in logged and "report/results.csv" in logged


def test_html_report_renders_in_headless_chromium(report_dir, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = (report_dir / "index.html").resolve()
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # self-contained: no network
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert "<title>kdbench report: default</title>" in dom.stdout
    assert dom.stdout.count("<table") >= 2 and "data:image/png;base64" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1400,1000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    with Image.open(shot) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a rendered page with text and plots, not a blank error
