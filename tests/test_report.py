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

FAST = ["--datasets", "glyphs(num_train=192,num_test=96)", "--epochs", "2", "--teacher-epochs", "2", "--batch-size", "32"]


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
            "training_curves.png", "accuracy_vs_latency_cpu.png"} <= names  # one plot per target, all precisions

    cells = pd.read_csv(report_dir / "results.csv")
    assert len(cells) == 4 and set(cells["method"]) == {"baseline", "kd"} and set(cells["seed"]) == {0, 1}
    assert (cells["status"] == "FINISHED").all() and cells["top1"].between(0, 100).all()
    assert json.loads((report_dir / "results.json").read_text())[0]["spec_hash"]
    for png in report_dir.glob("*.png"):
        with Image.open(png) as img:
            assert img.width > 300 and img.height > 200

    readme = (report_dir / "README.md").read_text()
    # what every row shares is stated once, above the table, not repeated on each row
    board_md = readme.split("## Leaderboard\n")[1].split("\n## ")[0]
    assert board_md.count("glyphs(num_test=96,num_train=192)") == 1
    assert "- **dataset**: glyphs(num_test=96,num_train=192)" in board_md
    assert "- **pair (teacher → student)**: tiny: test_resnet → test_efficientnet" in board_md
    assert "- **recipe (students)**: 2 epochs, batch 32, SGD (lr " in board_md
    assert "- **top-1 scored at**: the last epoch (epoch 2)" in board_md and "- **student seeds**: 0, 1" in board_md
    assert "- **teachers**: 2 (seeds 0, 1), one per student seed" in board_md
    assert "| rank | method | top-1 | 95% CI | Δ baseline |" in board_md  # key columns first
    assert "## Provenance" in readme and "kdbench reproduce " in readme
    assert re.search(r"\| [12](–2)? \| kd \| \d+\.\d\d ± \d+\.\d\d \| ± \d+\.\d\d \| [+-]\d+\.\d\d ± \d+\.\d\d \|", board_md)
    page = (report_dir / "index.html").read_text()
    board_html = page.split("<h2>Leaderboard</h2>")[1].split("<h2>")[0]
    assert board_html.count("glyphs(num_test=96") == 1 and "<dt>dataset</dt>" in board_html
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


# --------------------------------------------------------------------------- a compression board, made by hand

METHODS = {  # method: (top-1 of seed 0, precision deployed, p50 ms on cpu, on cpu-1t)
    "baseline": (60.0, "fp32", 20.0, 40.0),
    "kd": (62.0, "fp32", 20.0, 40.0),  # the same deployed model as the baseline: the same latency
    "prune(ratio=0.3,finetune_epochs=3)": (59.0, "fp32", 12.0, 25.0),
    "prune(ratio=0.5,finetune=kd,finetune_epochs=3)": (57.0, "fp32", 8.0, 17.0),
    "quant(calibration_batches=8)": (59.5, "int8", 6.0, 11.0),
    "kd>prune(ratio=0.5,finetune=kd,finetune_epochs=3)>quant(calibration_batches=8)": (56.0, "int8", 4.0, 7.0),
}


def compression_board():
    from kdbench.results.leaderboards import aggregate

    rows = []
    for method, (top1, precision, cpu, cpu1) in METHODS.items():
        for seed in (0, 1, 2):
            row = {"run_id": f"{method}-{seed}", "status": "FINISHED", "start_time": seed,
                   "spec_hash": f"{method}-{seed}", "suite": "compression",
                   "dataset": "glyphs(num_test=512,num_train=1024)", "pair": "tiny", "method": method,
                   "teacher": "test_resnet", "student": "test_efficientnet", "seed": seed, "teacher_seed": 0,
                   "kdbench_version": "0.1.0", "recipe_hash": "r", "top1": top1 + seed, "top5": 90.0,
                   "teacher_top1": 70.0, "params": 1e5, "macs": 2e6, "size_bytes": 4e5,
                   f"latency_p50_ms.cpu.{precision}": cpu, f"latency_p50_ms.cpu-1t.{precision}": cpu1}
            if precision == "int8":
                row.update({"compile_s.cpu.int8": 9.0, "compile_s.cpu-1t.int8": 8.0})
            rows.append(row)
    return aggregate(pd.DataFrame(rows))


def test_one_accuracy_latency_plot_per_target_holds_every_precision(tmp_path, monkeypatch):
    import matplotlib.figure

    from kdbench.results.report import hardware_targets, plot_accuracy_vs_latency

    board = compression_board()
    assert hardware_targets(board) == ["cpu", "cpu-1t"]  # not cpu.fp32, cpu.int8, ...
    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figures.append(self))
    plot_accuracy_vs_latency(board, "cpu", tmp_path / "cpu.png")
    (ax,) = figures[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Pareto front (all precisions)", "fp32", "int8"]
    labels = {a.get_text(): a.xy for a in ax.texts}
    assert len(labels) == len(METHODS)  # every row, labelled by method (options used everywhere left out)
    assert labels["kd"][0] == labels["baseline"][0] == 20.0  # one deployed model, one latency
    assert labels["quant"] == (6.0, 60.5) and "kd>prune(ratio=0.5,finetune=kd)>quant" in labels
    # one front across precisions: kd (fp32), quant (int8) and the int8 chain; the pruned fp32 rows lose to quant
    front_x = next(line for line in ax.get_lines() if line.get_label() == "Pareto front (all precisions)").get_xdata()
    assert list(front_x) == [4.0, 6.0, 20.0]
    assert not board.set_index("method").loc["prune(ratio=0.3,finetune_epochs=3)", "pareto.cpu.fp32"]


def test_a_compression_board_reads_at_1280_px_in_chromium(tmp_path):
    from kdbench.results.leaderboards import display_frame
    from kdbench.results.report import html_page

    browser = chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    board = compression_board()
    board.loc[board["method"] == "kd", "speedup.cpu.fp32"] = float("nan")
    board.loc[board["method"] == "kd", "speedup_note.cpu.fp32"] = "unreliable (CV 7%)"
    shown = display_frame(board)
    assert shown.attrs["fixed"]["dataset"] == "glyphs(num_test=512,num_train=1024)" and "dataset" not in shown
    assert list(shown.columns[:5]) == ["rank", "method", "top-1", "95% CI", "Δ baseline"]
    page = html_page("board", [("Leaderboard", shown)], []).replace(
        "</body>", "<script>var t = document.querySelector('table.sortable');"
                   "document.title = 'width ' + t.getBoundingClientRect().right + ' of ' "
                   "+ document.documentElement.clientWidth;</script></body>")
    assert page.count("glyphs(num_test=512") == 1 and "unreliable (CV 7%)" in page
    path = tmp_path / "board.html"
    path.write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,900"]
    dom = subprocess.run([browser, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    right, width = map(float, re.search(r"<title>width ([\d.]+) of ([\d.]+)</title>", dom.stdout).groups())
    assert right <= width, f"the table runs {right - width:.0f} px off a 1280 px window"


def test_the_report_says_how_busy_the_machine_was_while_measuring():
    import pandas as pd

    from kdbench.results.report import measurement_load

    frame = pd.DataFrame({"measure_other_cpu": [0.01, 0.052], "measure_load1": [0.4, 1.08]})
    text = measurement_load(frame)
    assert "5.2% of the CPU" in text and "1.08" in text
    assert measurement_load(pd.DataFrame({"top1": [1.0]})).startswith("not recorded")


def test_many_rows_at_one_latency_plot_without_stacking_their_labels_out_of_the_figure(tmp_path):
    """32 distillers deploying one student (the kd-methods report) once stacked 32 labels upwards until
    matplotlib's rasteriser overflowed; now only the Pareto row is labelled and the PNG is written."""
    from kdbench.results.leaderboards import aggregate
    from kdbench.results.report import plot_accuracy_vs_latency

    rows = [{"run_id": f"m{i}-{s}", "status": "FINISHED", "start_time": s, "spec_hash": f"m{i}-{s}", "suite": "k",
             "dataset": "glyphs", "pair": "tiny", "method": "baseline" if i == 0 else f"method{i:02d}",
             "teacher": "T", "student": "S", "seed": s, "teacher_seed": s, "kdbench_version": "0.1.0",
             "recipe_hash": "r", "top1": 40.0 + i + s, "top5": 90.0, "teacher_top1": 80.0, "params": 1e5,
             "deployed_model": "student", "latency_p50_ms.cpu.fp32": 0.92} for i in range(32) for s in (0, 1, 2)]
    board = aggregate(pd.DataFrame(rows))
    assert (board["speedup.cpu.fp32"] == 1.0).all()  # one deployed model: 1.00× for every row
    path = plot_accuracy_vs_latency(board, "cpu", tmp_path / "cpu.png")
    with Image.open(path) as image:
        assert image.size[1] < 2000  # the figure keeps its size: no label pushed thousands of pixels away
