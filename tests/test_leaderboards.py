"""Leaderboard aggregation on hand-made run tables with known answers."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from kdbench.results.leaderboards import aggregate, ci95, display_frame, pareto_flags, published_top1


def row(method, seed, top1, status="FINISHED", start=0, pair="p", latency=1.0, version="0.1.0", recipe="r1", **extra):
    return {
        "run_id": f"{method}-{seed}-{start}", "status": status, "start_time": start,
        "spec_hash": f"{pair}-{method}-{seed}", "suite": "s", "dataset": "d", "pair": pair, "method": method,
        "teacher": "T", "student": "S", "seed": seed, "kdbench_version": version, "recipe_hash": recipe,
        "top1": top1, "top5": None if top1 is None else top1 + 10, "teacher_top1": 80.0, "params": 1000.0,
        "latency_p50_ms.cpu.fp32": latency, **extra,
    }


def frame(*rows):
    return pd.DataFrame(list(rows))


def test_means_stds_ci_and_paired_deltas():
    f = frame(
        row("baseline", 0, 60.0), row("baseline", 1, 62.0), row("baseline", 2, 64.0),
        row("kd", 0, 63.0), row("kd", 1, 66.0), row("kd", 2, 66.0),
    )
    board = aggregate(f).set_index("method")
    kd = board.loc["kd"]
    assert kd["seeds"] == 3
    assert kd["top1_mean"] == pytest.approx(65.0)
    assert kd["top1_std"] == pytest.approx(math.sqrt(3.0))  # sample std of 63, 66, 66
    # t(0.975, 2) = 4.302653 ; CI half-width = t * s / sqrt(n)
    assert kd["top1_ci95"] == pytest.approx(4.302653 * math.sqrt(3.0) / math.sqrt(3), rel=1e-5)
    # paired by seed: deltas 3, 4, 2
    assert kd["delta_baseline"] == pytest.approx(3.0)
    assert kd["delta_baseline_std"] == pytest.approx(1.0)
    assert kd["paired_seeds"] == 3
    assert kd["delta_teacher"] == pytest.approx(-15.0)
    assert kd["retention"] == pytest.approx(65.0 / 80.0)
    assert kd["top5_mean"] == pytest.approx(75.0)
    assert board.loc["baseline", "delta_baseline"] == pytest.approx(0.0)
    assert list(aggregate(f)["method"]) == ["kd", "baseline"]  # ranked by top-1
    assert kd["rank"] == 1 and board.loc["baseline", "rank"] == 2


def test_deltas_are_paired_not_mean_differences():
    # kd lacks seed 2; pairing uses seeds 0 and 1 only (mean difference would mislead)
    f = frame(row("baseline", 0, 50.0), row("baseline", 1, 60.0), row("baseline", 2, 90.0),
              row("kd", 0, 52.0), row("kd", 1, 61.0))
    kd = aggregate(f).set_index("method").loc["kd"]
    assert kd["delta_baseline"] == pytest.approx(1.5)
    assert kd["paired_seeds"] == 2


def test_failed_runs_are_counted_not_averaged_and_reruns_count_once():
    f = frame(
        row("baseline", 0, 60.0), row("baseline", 1, 62.0),
        row("kd", 0, 70.0, start=1), row("kd", 0, 64.0, start=2),  # rerun of the same cell: latest counts
        row("kd", 1, None, status="FAILED", start=3),
        row("crd", 0, None, status="FAILED"), row("crd", 1, None, status="RUNNING"),
        row("fit", 0, None, status="FAILED", start=1), row("fit", 0, 58.0, start=5),  # failed, then finished
    )
    board = aggregate(f).set_index("method")
    assert board.loc["kd", "seeds"] == 1 and board.loc["kd", "top1_mean"] == pytest.approx(64.0)
    assert board.loc["kd", "failed"] == 1
    assert board.loc["crd", "seeds"] == 0 and board.loc["crd", "failed"] == 2 and math.isnan(board.loc["crd", "top1_mean"])
    assert board.loc["fit", "failed"] == 0 and board.loc["fit", "top1_mean"] == pytest.approx(58.0)
    shown = display_frame(aggregate(f)).set_index("method")
    assert shown.loc["crd", "top-1"] == "—" and shown.loc["crd", "failed"] == 2


def test_mixed_versions_and_recipes_are_flagged():
    f = frame(row("baseline", 0, 60.0), row("baseline", 1, 61.0, version="0.2.0"),
              row("kd", 0, 62.0), row("kd", 1, 63.0, recipe="r2"))
    board = aggregate(f).set_index("method")
    assert board.loc["baseline", "mixed_versions"] and board.loc["baseline", "flags"] == "mixed kdbench versions, one teacher"
    assert board.loc["kd", "mixed_recipes"] and board.loc["kd", "flags"] == "mixed recipes, one teacher"


def test_speedup_against_the_fp32_student_baseline_and_pareto():
    f = frame(
        row("baseline", 0, 60.0, latency=2.0),
        row("kd", 0, 65.0, latency=2.0),
        row("prune", 0, 58.0, latency=1.0),
        row("bad", 0, 57.0, latency=1.5),  # dominated by prune: slower and less accurate
    )
    board = aggregate(f).set_index("method")
    assert board.loc["prune", "speedup.cpu.fp32"] == pytest.approx(2.0)
    assert board.loc["baseline", "speedup.cpu.fp32"] == pytest.approx(1.0)
    flags = board["pareto.cpu.fp32"].to_dict()
    assert flags == {"kd": True, "prune": True, "baseline": False, "bad": False}


def test_pareto_flags_hand_made():
    acc = pd.Series([70.0, 70.0, 75.0, 60.0, float("nan")])
    lat = pd.Series([1.0, 2.0, 3.0, 0.5, 0.1])
    assert list(pareto_flags(acc, lat)) == [True, False, True, True, False]


def test_ci_needs_two_values_and_published_lookup():
    assert math.isnan(ci95(pd.Series([1.0])))
    published = {"source": "CRD", "top1": {"resnet32x4-resnet8x4": {"kd": 73.33, "baseline": 72.5}}}
    assert published_top1(published, "resnet32x4-resnet8x4", "kd") == 73.33
    assert published_top1(published, "resnet32x4-resnet8x4", "kd(T=4)") == 73.33
    assert math.isnan(published_top1(published, "other", "kd"))
    f = frame(row("baseline", 0, 70.0, pair="resnet32x4-resnet8x4"), row("kd", 0, 72.0, pair="resnet32x4-resnet8x4"))
    board = aggregate(f, published).set_index("method")
    assert board.loc["kd", "paper_top1"] == 73.33
    assert "paper top-1" in display_frame(aggregate(f, published)).columns


def test_one_pareto_front_per_target_across_precisions_and_fixed_columns_once():
    # int8 rows carry only cpu.int8, fp32 rows only cpu.fp32: they compete on one cpu front
    f = frame(
        row("baseline", 0, 60.0, latency=2.0),
        row("prune", 0, 58.0, latency=1.0),
        row("quant", 0, 59.0, latency=math.nan, **{"latency_p50_ms.cpu.int8": 0.5}),
        row("prune>quant", 0, 55.0, latency=math.nan, **{"latency_p50_ms.cpu.int8": 0.8}),  # dominated by quant
    )
    board = aggregate(f).set_index("method")
    assert board["pareto.cpu.fp32"].to_dict() == {"baseline": True, "quant": False, "prune": False,
                                                  "prune>quant": False}  # prune: beaten by the int8 quant
    assert board["pareto.cpu.int8"].to_dict() == {"baseline": False, "quant": True, "prune": False,
                                                  "prune>quant": False}
    shown = display_frame(aggregate(f))
    assert list(shown.columns[:5]) == ["rank", "method", "top-1", "95% CI", "Δ baseline"]
    # the same on every row: stated once, not a column
    assert "dataset" not in shown and shown.attrs["fixed"]["dataset"] == "d"
    assert shown.attrs["fixed"]["pair"] == "p: T → S" and shown.attrs["fixed"]["seeds"] == "1"
    # one set of columns for the cpu target, the precision on the row
    assert list(shown["precision"]) == ["fp32", "int8", "fp32", "int8"]
    assert list(shown["cpu ms"]) == ["2.00", "0.50", "1.00", "0.80"] and list(shown["cpu Pareto"]) == ["★", "★", "", ""]
    full = display_frame(aggregate(f), compact=False)
    assert "dataset" in full and full.attrs == {}


def test_withheld_speedups_show_the_note_not_a_number():
    board = aggregate(frame(row("baseline", 0, 60.0, latency=2.0), row("prune", 0, 58.0, latency=1.0)))
    board["speedup.cpu.fp32"] = [1.0, math.nan]
    board["speedup_note.cpu.fp32"] = [None, "unreliable (CV 7%)"]
    shown = display_frame(board).set_index("method")
    assert shown.loc["prune", "cpu speed-up"] == "unreliable (CV 7%)" and shown.loc["baseline", "cpu speed-up"] == "1.00×"


def test_teachers_are_part_of_the_seed_and_delta_pairs_by_teacher_and_seed():
    # student seed i trained against teacher i; teacher 1 is the better one and lifts both rows
    f = frame(
        row("baseline", 0, 60.0, teacher_seed=0, teacher_top1=80.0), row("baseline", 1, 70.0, teacher_seed=1, teacher_top1=84.0),
        row("kd", 0, 62.0, teacher_seed=0, teacher_top1=80.0), row("kd", 1, 75.0, teacher_seed=1, teacher_top1=84.0),
        row("kd", 0, 66.0, teacher_seed=1, teacher_top1=84.0, spec_hash="kd-0-t1", run_id="x"),  # a cross unit
    )
    f.loc[f["run_id"] == "x", "spec_hash"] = "kd-0-t1"
    board = aggregate(f).set_index("method")
    kd = board.loc["kd"]
    assert kd["teachers"] == 2 and "one teacher" not in kd["flags"]
    assert kd["teacher_top1"] == pytest.approx(82.0) and kd["teacher_top1_std"] == pytest.approx(math.sqrt(8.0))
    # (t0, s0): 62-60; (t1, s1): 75-70; (t1, s0) has no baseline cell of its own: not paired
    assert kd["paired_seeds"] == 2 and kd["delta_baseline"] == pytest.approx(3.5)


def test_noisy_or_disturbed_measurements_give_no_speedup_number():
    cv = "latency_cv.cpu.fp32"
    quiet = frame(row("baseline", 0, 60.0, latency=2.0, **{cv: 0.01}), row("prune", 0, 58.0, latency=1.0, **{cv: 0.02}))
    assert aggregate(quiet).set_index("method").loc["prune", "speedup.cpu.fp32"] == pytest.approx(2.0)
    noisy = frame(row("baseline", 0, 60.0, latency=2.0, **{cv: 0.01}), row("prune", 0, 58.0, latency=1.0, **{cv: 0.09}))
    board = aggregate(noisy).set_index("method")
    assert math.isnan(board.loc["prune", "speedup.cpu.fp32"])
    assert board.loc["prune", "speedup_note.cpu.fp32"] == "unreliable (CV 9%)"
    loaded = frame(row("baseline", 0, 60.0, latency=2.0, measure_other_cpu=0.4), row("prune", 0, 58.0, latency=1.0))
    assert "under load" in aggregate(loaded).set_index("method").loc["prune", "speedup_note.cpu.fp32"]
    failed = frame(row("baseline", 0, None, status="FAILED", latency=None), row("prune", 0, 58.0, latency=1.0))
    note = aggregate(failed).set_index("method").loc["prune", "speedup_note.cpu.fp32"]
    assert note.startswith("no reference")


def test_rows_deploying_the_baselines_own_model_show_1x_however_noisy_its_one_measurement():
    cv = "latency_cv.cpu.fp32"
    same = dict(latency=2.0, deployed_model="student-a", **{cv: 0.3})
    f = frame(row("baseline", 0, 60.0, **same), row("kd", 0, 70.0, **same),
              row("prune", 0, 58.0, latency=1.0, deployed_model="pruned-a", **{cv: 0.01}))
    board = aggregate(f).set_index("method")
    assert board.loc["kd", "speedup.cpu.fp32"] == 1.0 and pd.isna(board.loc["kd", "speedup_note.cpu.fp32"])
    # a different model is a ratio of two measurements: the reference's 30% CV withholds it
    assert math.isnan(board.loc["prune", "speedup.cpu.fp32"])
    assert board.loc["prune", "speedup_note.cpu.fp32"] == "unreliable (CV 30%)"


def test_a_rerun_that_failed_shows_on_its_row_though_the_earlier_finished_run_is_averaged():
    f = frame(
        row("baseline", 0, 60.0), row("baseline", 1, 62.0),
        row("kd", 0, 70.0, start=1), row("kd", 0, None, status="FAILED", start=2),  # --force rerun failed
        row("kd", 1, 71.0, start=1),
        row("fit", 0, None, status="KILLED", start=1), row("fit", 0, 58.0, start=5),  # killed, then finished
        row("fit", 1, 59.0, start=1),
    )
    board = aggregate(f).set_index("method")
    assert board.loc["kd", "top1_mean"] == pytest.approx(70.5) and board.loc["kd", "failed"] == 0
    assert board.loc["kd", "latest_failed"] == 1 and board.loc["kd", "rerun_failed"] == 1
    assert "latest run of 1 cell(s) failed" in board.loc["kd", "flags"]
    assert board.loc["fit", "latest_failed"] == 0 and "failed" not in board.loc["fit", "flags"]
    assert board.loc["baseline", "latest_failed"] == 0
    shown = display_frame(aggregate(f)).set_index("method")
    assert shown.loc["kd", "latest run failed"] == "1" and shown.loc["fit", "latest run failed"] == "0"
