"""kdbench.results.stats on hand-made tables whose answers are computed independently here."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kdbench.results import comparisons, leaderboards
from kdbench.results import stats as S


def cells(values: dict[str, list[float]], seeds=None, teacher_seeds=None) -> pd.DataFrame:
    """One cell per (method, i): seed seeds[method][i] (default i), teacher seed optional."""
    rows = []
    for method, vals in values.items():
        for i, v in enumerate(vals):
            row = {"dataset": "d", "pair": "p", "method": method, "top1": v,
                   "seed": (seeds or {}).get(method, range(len(vals)))[i]}
            if teacher_seeds is not None:
                row["teacher_seed"] = teacher_seeds.get(method, range(len(vals)))[i]
            rows.append(row)
    return pd.DataFrame(rows)


# seeds differ a lot from each other (the teacher/data draw), A beats B by about 1 point on every seed
A = np.array([60.0, 70.0, 80.0, 65.0])
B = A - np.array([1.0, 1.5, 0.5, 1.2])


def test_paired_and_unpaired_cis_differ_where_pairing_matters():
    d = A - B
    n = len(d)
    half = sps.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    pairs, _ = S.compare(cells({"a": list(A), "b": list(B)}))
    (r,) = pairs.to_dict("records")
    assert r["paired"] and r["test"] == "paired t" and r["n_pairs"] == 4
    assert (r["row_a"], r["row_b"]) == ("a", "b")
    assert r["diff"] == pytest.approx(d.mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["p"] == pytest.approx(sps.ttest_rel(A, B).pvalue)
    assert r["ci_low"] > 0 and r["p"] < 0.05  # pairing removes the between-seed spread

    # same values, but B ran on other seeds: nothing to pair on, Welch on the raw arrays
    pairs, _ = S.compare(cells({"a": list(A), "b": list(B)}, seeds={"b": [10, 11, 12, 13]}))
    (u,) = pairs.to_dict("records")
    va, vb = A.var(ddof=1) / 4, B.var(ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 3)
    whalf = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    diff = A.mean() - B.mean()
    assert not u["paired"] and u["test"] == "Welch t (unpaired)" and u["n_pairs"] == 0
    assert (u["ci_low"], u["ci_high"]) == pytest.approx((diff - whalf, diff + whalf))
    assert u["p"] == pytest.approx(sps.ttest_ind(A, B, equal_var=False).pvalue)
    assert u["ci_low"] < 0 < u["ci_high"] and u["p"] > 0.5
    assert whalf > 10 * half and math.isnan(u["mde"])


def test_pairing_uses_teacher_seed_when_present():
    vals = {"a": list(A), "b": list(B)}
    same_teachers = S.compare(cells(vals, teacher_seeds={}))[0].iloc[0]
    assert same_teachers["paired"] and same_teachers["n_pairs"] == 4
    # same student seeds, but every b cell distilled from another teacher: no shared unit
    other_teachers = S.compare(cells(vals, teacher_seeds={"b": [9, 9, 9, 9]}))[0].iloc[0]
    assert not other_teachers["paired"]
    # teacher seed recorded only as missing: pair on the student seed
    f = cells(vals)
    f["teacher_seed"] = np.nan
    assert S.unit_columns(f) == ["seed"] and S.compare(f)[0].iloc[0]["paired"]
    # two shared units of four: paired on those two only
    part = S.compare(cells(vals, teacher_seeds={"b": [0, 1, 7, 8]}))[0].iloc[0]
    d = (A - B)[:2]
    assert part["paired"] and part["n_pairs"] == 2 and part["diff"] == pytest.approx(d.mean())


def test_holm_on_known_p_values():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # the step-down procedure itself: reject p_(i) while p_(i) <= alpha / (m - i), i from 0
    for alpha in (0.01, 0.025, 0.05, 0.07):
        rejected, m = set(), len(p)
        for i, j in enumerate(np.argsort(p)):
            if p[j] > alpha / (m - i):
                break
            rejected.add(j)
        assert {j for j, q in enumerate(S.holm(p)) if q <= alpha} == rejected
    assert S.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = S.holm([0.01, math.nan, 0.02])  # NaN is not a comparison: m = 2
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert len(S.holm([])) == 0


def exact_sign_flip(d) -> float:
    d = np.asarray(d, float)
    obs = abs(d.mean())
    flips = [abs((d * np.array(s)).mean()) >= obs - 1e-12 for s in itertools.product([1, -1], repeat=len(d))]
    return sum(flips) / len(flips)


def test_sign_flip_p_value_is_exact_enumeration():
    d = [1.2, -0.3, 2.5, 0.8, 1.9]
    assert S.sign_flip_p(d) == pytest.approx(exact_sign_flip(d))
    assert S.sign_flip_p([-0.5, 0.4, 0.1, -0.2]) == pytest.approx(exact_sign_flip([-0.5, 0.4, 0.1, -0.2]))
    # the floor that keeps the board on the t-test: 3 pairs all in one direction give 2/8
    assert S.sign_flip_p([3.0, 4.0, 2.0]) == pytest.approx(0.25)
    assert S.sign_flip_p([0.0, 0.0]) == 1.0
    # above 2^13 patterns: Monte-Carlo, close to the full enumeration
    rng = np.random.default_rng(1)
    d15 = rng.normal(0.5, 1.0, 15)
    assert S.sign_flip_p(d15) == pytest.approx(exact_sign_flip(d15), abs=0.02)
    pairs, _ = S.compare(cells({"a": list(A), "b": list(B)}))
    assert pairs.iloc[0]["p_perm"] == pytest.approx(exact_sign_flip(A - B))  # 1/8: 4 positive differences


def test_rank_intervals_winner_ties_loser():
    rng = np.random.default_rng(0)
    seed_effect = np.array([0.0, 4.0, -3.0, 2.0, -1.0, 5.0])  # shared by every method: cancels in the pairs
    f = cells({"winner": list(70 + seed_effect + rng.normal(0, 0.2, 6)), "tie1": list(65 + seed_effect + rng.normal(0, 0.2, 6)),
               "tie2": list(65.1 + seed_effect + rng.normal(0, 0.2, 6)), "loser": list(55 + seed_effect + rng.normal(0, 0.2, 6))})
    f = pd.concat([f, pd.DataFrame([{"dataset": "d", "pair": "p", "method": "crashed", "seed": 0, "top1": np.nan}])])
    pairs, ranks = S.compare(f)
    assert len(pairs) == 6 and pairs["paired"].all()  # the crashed row has no values: not compared
    r = ranks.set_index("method")
    assert (r.loc["winner", "rank_low"], r.loc["winner", "rank_high"]) == (1, 1)
    for t in ("tie1", "tie2"):
        assert (r.loc[t, "rank_low"], r.loc[t, "rank_high"]) == (2, 3)
    assert (r.loc["loser", "rank_low"], r.loc["loser", "rank_high"]) == (4, 4)
    assert list(r["tied_with_best"]) == [True, False, False, False]
    assert "crashed" not in r.index  # nothing finished: not ranked (the board shows NaN ranks for it)
    tie = pairs[(pairs["row_a"].isin(["tie1", "tie2"])) & (pairs["row_b"].isin(["tie1", "tie2"]))].iloc[0]
    assert tie["p_holm"] > 0.05

    # the same function on a hand-written pairs table: two rows tied at the top, one behind both
    hand = pd.DataFrame({"row_a": ["x", "x", "y"], "row_b": ["y", "z", "z"], "diff": [0.1, 3.0, 2.9],
                         "p_holm": [0.8, 0.001, 0.01]})
    h = S.rank_intervals(["x", "y", "z", "w"], [70.1, 70.0, 67.1, math.nan], hand).set_index("row")
    assert h.loc[["x", "y", "z"], ["rank_low", "rank_high"]].to_numpy().tolist() == [[1, 2], [1, 2], [3, 3]]
    assert h["tied_with_best"].tolist() == [True, True, False, False]
    assert math.isnan(h.loc["w", "rank_low"])


def test_mde_reaches_the_stated_power_in_simulation():
    n, sd = 5, 2.0
    mde = S.mde_paired(sd, n)
    assert S.paired_t_power(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, size=(40000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1))
    assert power == pytest.approx(0.8, abs=0.01)
    # many pairs: the normal-theory value (z_0.975 + z_0.8) sd / sqrt(n)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    assert S.mde_paired(1.0, 400) == pytest.approx(z / 20, rel=5e-3)
    # few pairs: the exact noncentral-t answer is larger than the t-quantile approximation
    approx3 = (sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) / math.sqrt(3)
    assert S.mde_paired(1.0, 3) > approx3
    assert S.mde_paired(3.0, 3) == pytest.approx(3 * S.mde_paired(1.0, 3))
    assert math.isnan(S.mde_paired(1.0, 1)) and S.mde_paired(0.0, 4) == 0.0
    pairs, _ = S.compare(cells({"a": list(A), "b": list(B)}))
    assert pairs.iloc[0]["mde"] == pytest.approx(S.mde_paired((A - B).std(ddof=1), 4))
    det = S.detectable(pairs)
    assert det["n"] == 4 and det["m"] == 1 and det["mde"] == pytest.approx(pairs.iloc[0]["mde"])
    assert "4 paired seed(s)" in S.detectable_sentence(pairs)


def run_row(method, seed, top1, status="FINISHED"):
    return {"run_id": f"{method}-{seed}", "status": status, "start_time": 0, "spec_hash": f"{method}-{seed}",
            "suite": "s", "dataset": "d", "pair": "p", "method": method, "teacher": "T", "student": "S",
            "seed": seed, "kdbench_version": "0.1.0", "recipe_hash": "r", "top1": top1, "teacher_top1": 80.0}


def test_leaderboard_gets_rank_intervals_and_a_pairwise_table():
    rows = [run_row("baseline", s, v) for s, v in enumerate([60.0, 65.0, 58.0])]
    rows += [run_row("kd", s, v) for s, v in enumerate([64.0, 69.5, 61.8])]
    rows += [run_row("fitnet", s, v) for s, v in enumerate([64.2, 69.0, 62.1])]
    rows += [run_row("crd", 0, None, status="FAILED")]
    frame = pd.DataFrame(rows)
    board = leaderboards.aggregate(frame).set_index("method")
    assert {"rank_low", "rank_high", "tied_with_best", "rank", "top1_mean"} <= set(board.columns)
    assert board.loc["kd", "tied_with_best"] and board.loc["fitnet", "tied_with_best"]
    assert not board.loc["baseline", "tied_with_best"] and not board.loc["crd", "tied_with_best"]
    assert (board.loc["baseline", "rank_low"], board.loc["baseline", "rank_high"]) == (3, 3)
    assert math.isnan(board.loc["crd", "rank_low"])
    pairs = leaderboards.comparisons(frame)
    assert len(pairs) == 3 and set(pairs["row_b"]) | set(pairs["row_a"]) == {"kd", "fitnet", "baseline"}
    kd_base = pairs[(pairs["row_a"] == "kd") & (pairs["row_b"] == "baseline")].iloc[0]
    assert kd_base["p"] == pytest.approx(sps.ttest_rel([64.0, 69.5, 61.8], [60.0, 65.0, 58.0]).pvalue)
    ps = sorted(pairs["p"])
    k = ps.index(kd_base["p"])
    assert kd_base["p_holm"] == pytest.approx(min(1.0, max((3 - i) * ps[i] for i in range(k + 1))))
    shown = S.display_pairs(pairs)
    assert list(shown.columns)[:4] == ["A", "B", "pairs", "Δ (A − B)"]
    assert leaderboards.comparisons(frame.iloc[0:0]).empty


def test_report_section_lists_every_group():
    rows = [run_row("baseline", s, v) for s, v in enumerate([60.0, 65.0, 58.0])]
    rows += [run_row("kd", s, v) for s, v in enumerate([64.0, 69.5, 61.8])]
    other = [{**run_row(m, s, v + 10), "pair": "q", "spec_hash": f"q-{m}-{s}"}
             for m, vals in (("baseline", [50.0, 51.0]), ("kd", [52.0, 55.0])) for s, v in enumerate(vals)]
    frame = pd.DataFrame(rows + other)
    board = leaderboards.aggregate(frame)
    tables, md = comparisons.sections(board, leaderboards.comparisons(frame), leaderboards.latest_finished(frame))
    text = "\n".join(md)
    assert text.count("### ") == 2 and "### p on d" in text and "### q on d" in text
    assert "paired by seed" in text and "| kd | baseline | 3 |" in text and "| kd | baseline | 2 |" in text
    assert "With 3 paired seed(s)" in text and "With 2 paired seed(s)" in text
    assert len(tables) == 4 and [t[0].split(":")[0] for t in tables] == ["Rank intervals", "Pairwise comparisons"] * 2
    assert tables[0][1]["rank interval"].tolist() == ["1", "2"] and tables[0][1]["tied with best"].tolist() == ["✓", ""]
    assert tables[2][1]["rank interval"].tolist() == ["1–2", "1–2"]  # 2 seeds, differences 2 and 4: not separated
    assert comparisons.sections(leaderboards.aggregate(frame.iloc[0:0]), pd.DataFrame(), frame) == ([], [])
