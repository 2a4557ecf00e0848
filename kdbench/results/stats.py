"""Statistics for leaderboards: paired differences, Holm, rank intervals, detectable effects.

Pure functions on numpy / pandas / scipy; nothing here reads MLflow.

The question a reader asks of a leaderboard is "is method A better than method
B, and could the suite have told?". For every pair of rows of one
(suite, dataset, pair) group, :func:`compare` answers with

- the **paired difference**: rows are paired by the unit they share, the
  (teacher seed, student seed) of the cell (the student seed alone when the
  frame has no ``teacher_seed`` column), so the teacher draw and the data order
  cancel out of the difference. Mean difference, its 95% CI (Student t on the
  paired differences) and two p-values:

  - ``p``: the **paired t-test** (:func:`scipy.stats.ttest_rel`). This is the
    p-value the board uses (Holm, rank intervals, ties). Reason: it is the test
    whose rejection region matches the CI printed next to it (p < 0.05 exactly
    when the 95% CI excludes 0), and it can reject at the 3-5 seeds the suites
    run. The sign-flip test cannot: its smallest two-sided p-value is 2 / 2^n,
    i.e. 0.25 at 3 pairs and 0.0625 at 5, so below 6 pairs it never rejects at
    0.05 whatever the data.
  - ``p_perm``: the **sign-flip permutation test** of the mean paired
    difference (:func:`scipy.stats.permutation_test`, one sample,
    ``permutation_type="samples"``), exact (all 2^n sign patterns) up to
    ``2^n <= n_resamples`` (n <= 13 at the default 9999), Monte-Carlo with a
    fixed seed above. Shown as a distribution-free check of ``p``.

- an **unpaired Welch fallback** when the two rows share fewer than 2 units
  (no pairing possible): Welch's t-test on all values of both rows (CI on the
  difference of means with Welch-Satterthwaite df) and a label-permutation
  p-value; ``paired`` is False and ``test`` says "Welch t (unpaired)".
- **Holm's step-down correction** (:func:`holm`) over all comparisons of the
  group (the family is one dataset × pair table of the board).
- **rank intervals** (:func:`rank_intervals`): a row's best possible rank is
  1 + the number of rows significantly better than it (Holm-corrected), its
  worst n − the number significantly worse; ``tied_with_best`` marks rows not
  significantly worse than the top row.
- the **minimum detectable effect** (:func:`mde_paired`): the smallest true
  mean paired difference a two-sided paired t-test at alpha 0.05 detects with
  power 0.8, given the observed sd of the paired differences and n, solved
  exactly with scipy's noncentral t distribution.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import optimize, stats

ALPHA = 0.05
POWER = 0.8
N_RESAMPLES = 9999
GROUP_KEYS = ("suite", "dataset", "pair")
ROW_KEY = "method"
PAIR_COLUMNS = ["row_a", "row_b", "n_pairs", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
                "sd_diff", "p", "p_perm", "p_holm", "paired", "test", "mde"]
RANK_COLUMNS = ["rank_low", "rank_high", "tied_with_best"]


@dataclass(frozen=True)
class Difference:
    """One comparison of row A with row B; ``diff`` is A − B (paired: mean of the paired differences)."""

    n_pairs: int
    diff: float
    ci_low: float
    ci_high: float
    sd_diff: float
    p: float
    p_perm: float
    paired: bool
    test: str


# --------------------------------------------------------------------------- tests on two samples


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def _mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def sign_flip_p(d: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(d) = 0.

    Exact (enumerates all 2^n sign patterns) when 2^n <= ``n_resamples``,
    Monte-Carlo with ``n_resamples`` random patterns (seeded) otherwise.
    """
    d = np.asarray(d, float)
    if len(d) < 1 or np.all(d == 0):
        return math.nan if len(d) < 1 else 1.0
    res = stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True,
                                 n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed))
    return float(res.pvalue)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = N_RESAMPLES) -> Difference:
    """A − B on values already aligned by unit: paired t (CI, ``p``) and sign-flip (``p_perm``)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return Difference(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, True, "paired t")
    with warnings.catch_warnings():  # constant differences: scipy warns, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(confidence)
    return Difference(n, float(d.mean()), float(ci.low), float(ci.high), float(d.std(ddof=1)), float(res.pvalue),
                      sign_flip_p(d, n_resamples), True, "paired t")


def welch_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> Difference:
    """mean(A) − mean(B) for unpaired samples: Welch t (CI, ``p``) and a label-permutation ``p_perm``."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return Difference(0, diff, math.nan, math.nan, math.nan, math.nan, math.nan, False, "Welch t (unpaired)")
    with warnings.catch_warnings():  # constant differences: scipy warns, the result stands
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(confidence)
    perm = stats.permutation_test((a, b), _mean_diff, permutation_type="independent", vectorized=True,
                                  n_resamples=n_resamples, rng=np.random.default_rng(seed))
    return Difference(0, diff, float(ci.low), float(ci.high), math.nan, float(res.pvalue), float(perm.pvalue),
                      False, "Welch t (unpaired)")


def difference(a: pd.Series, b: pd.Series, confidence: float = 0.95, n_resamples: int = N_RESAMPLES) -> Difference:
    """A − B for two rows given as Series indexed by unit: paired on shared units, Welch when under 2 are shared."""
    a, b = a.dropna(), b.dropna()
    shared = a.index.intersection(b.index)
    if len(shared) >= 2:
        return paired_difference(a.loc[shared].to_numpy(), b.loc[shared].to_numpy(), confidence, n_resamples)
    return welch_difference(a.to_numpy(), b.to_numpy(), confidence, n_resamples)


# --------------------------------------------------------------------------- multiple comparisons


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN and is not counted in m.

    Sorted ascending, p_(i) is multiplied by (m − i + 1), made non-decreasing by a running
    maximum and capped at 1. Rejecting where the adjusted p < alpha is Holm's procedure.
    """
    p = np.asarray(p, float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * (m - np.arange(m))
    adjusted = np.minimum(1.0, np.maximum.accumulate(scaled))
    values = np.empty(m)
    values[order] = adjusted
    out[ok] = values
    return out


# --------------------------------------------------------------------------- rank intervals


def rank_intervals(rows: Sequence[str], means: Sequence[float], pairs: pd.DataFrame,
                   alpha: float = ALPHA) -> pd.DataFrame:
    """Per row: ``rank_low``, ``rank_high`` (1 = best) and ``tied_with_best``.

    ``pairs`` has columns row_a, row_b, diff (A − B) and p_holm. A row's best possible
    rank is 1 + the rows significantly better than it; its worst, n − the rows significantly
    worse. ``tied_with_best``: the top row by mean, and every row not significantly worse than it.
    Rows whose mean is NaN (nothing finished) get NaN ranks and are left out of n.
    """
    frame = pd.DataFrame({"row": list(rows), "mean": np.asarray(means, float)})
    ranked = frame[frame["mean"].notna()]
    n = len(ranked)
    better = {r: 0 for r in ranked["row"]}
    worse = dict(better)
    beaten_by: dict[str, set[str]] = {r: set() for r in ranked["row"]}
    for pr in pairs.itertuples(index=False):
        if pr.row_a not in better or pr.row_b not in better or not pr.p_holm < alpha or pr.diff == 0:
            continue
        win, lose = (pr.row_a, pr.row_b) if pr.diff > 0 else (pr.row_b, pr.row_a)
        better[lose] += 1
        worse[win] += 1
        beaten_by[lose].add(win)
    best = ranked.sort_values("mean", ascending=False, kind="stable")["row"].iloc[0] if n else None
    frame["rank_low"] = [1 + better[r] if r in better else math.nan for r in frame["row"]]
    frame["rank_high"] = [n - worse[r] if r in worse else math.nan for r in frame["row"]]
    frame["tied_with_best"] = [r in better and best not in beaten_by[r] for r in frame["row"]]
    return frame.drop(columns="mean")


# --------------------------------------------------------------------------- detectable effect


def paired_t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at alpha for a true mean difference ``effect`` (noncentral t)."""
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = effect * math.sqrt(n) / sd
    # P(T < -crit | ncp) = P(T > crit | -ncp): scipy's nct.cdf returns NaN deep in that tail
    return float(stats.nct.sf(crit, df, ncp) + np.nan_to_num(stats.nct.sf(crit, df, -ncp)))


def mde_paired(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided paired t-test, in the units of ``sd``.

    Solves ``paired_t_power(mde, sd, n, alpha) = power`` exactly on scipy's noncentral t
    (not the (t_{1−α/2} + t_power)·sd/√n approximation, which is optimistic at few seeds).
    NaN when n < 2 or the sd is unknown; 0 when the paired differences do not vary.
    """
    if n < 2 or sd is None or not np.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    # solved for sd = 1 (the effect in sd units depends on n and alpha only), then scaled
    guess = (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) / math.sqrt(n)
    hi = guess
    while paired_t_power(hi, 1.0, n, alpha) < power:
        hi *= 2
    return float(sd * optimize.brentq(lambda e: paired_t_power(e, 1.0, n, alpha) - power, 0.0, hi, xtol=1e-12))


def detectable(pairs: pd.DataFrame, alpha: float = ALPHA, power: float = POWER) -> dict[str, float]:
    """The suite-level detectable difference of one group's paired comparisons.

    n = the median number of pairs, sd = the pooled (root mean square) sd of the paired
    differences; returns n, m (comparisons), sd, the MDE at alpha, and at alpha / m (the
    threshold of Holm's first step, i.e. what a single comparison needs to survive correction).
    """
    paired = pairs[pairs["paired"].astype(bool) & pairs["sd_diff"].notna()]
    m = int(pairs["p"].notna().sum())
    if paired.empty:
        return {"n": math.nan, "m": m, "sd": math.nan, "mde": math.nan, "mde_holm": math.nan}
    n = int(np.median(paired["n_pairs"]))
    sd = float(np.sqrt(np.mean(np.square(paired["sd_diff"]))))
    return {"n": n, "m": m, "sd": sd, "mde": mde_paired(sd, n, alpha, power),
            "mde_holm": mde_paired(sd, n, alpha / max(m, 1), power)}


# --------------------------------------------------------------------------- per-cell frames


def unit_columns(cells: pd.DataFrame) -> list[str]:
    """The columns that pair cells: (teacher_seed, seed) when teacher seeds are recorded, seed otherwise."""
    if "teacher_seed" in cells and cells["teacher_seed"].notna().any():
        return ["teacher_seed", "seed"]
    return ["seed"]


def _values_by_unit(cells: pd.DataFrame, metric: str, units: list[str]) -> pd.Series:
    """One value per unit (the mean if a unit ran more than once), indexed by a unit label."""
    key = cells[units].astype(object).where(cells[units].notna(), "?").astype(str).agg("/".join, axis=1)
    return cells.assign(_unit=key).groupby("_unit")[metric].mean().dropna()


def compare_group(cells: pd.DataFrame, metric: str = "top1", row: str = ROW_KEY, alpha: float = ALPHA,
                  n_resamples: int = N_RESAMPLES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All pairwise comparisons of one group's rows (Holm within the group) and its rank intervals.

    Rows are ordered by mean (best first) and ``row_a`` is always the better-ranked row.
    """
    units = unit_columns(cells)
    values = {name: _values_by_unit(g, metric, units) for name, g in cells.groupby(row, sort=False)}
    means = pd.Series({name: v.mean() if len(v) else math.nan for name, v in values.items()}, dtype=float)
    means = means.sort_values(ascending=False, kind="stable", na_position="last")
    out = []
    for ra, rb in combinations([r for r in means.index if not math.isnan(means[r])], 2):
        d = difference(values[ra], values[rb], 1 - alpha, n_resamples)
        out.append({"row_a": ra, "row_b": rb, "n_a": len(values[ra]), "n_b": len(values[rb]),
                    "mean_a": means[ra], "mean_b": means[rb], **asdict(d),
                    "mde": mde_paired(d.sd_diff, d.n_pairs, alpha) if d.paired else math.nan})
    pairs = pd.DataFrame(out, columns=[c for c in PAIR_COLUMNS if c != "p_holm"])
    pairs.insert(PAIR_COLUMNS.index("p_holm"), "p_holm", holm(pairs["p"]))
    pairs["paired"] = pairs["paired"].astype(bool)
    ranks = rank_intervals(list(means.index), means.to_numpy(), pairs, alpha).rename(columns={"row": row})
    return pairs, ranks


def compare(cells: pd.DataFrame, metric: str = "top1", group: Sequence[str] = GROUP_KEYS, row: str = ROW_KEY,
            alpha: float = ALPHA, n_resamples: int = N_RESAMPLES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairwise comparison table and per-row rank intervals of a frame of per-cell results.

    ``cells``: one row per finished cell with the ``group`` columns that are present (of
    suite, dataset, pair), ``row`` (method), ``seed``, optionally ``teacher_seed``, and
    ``metric``. Returns ``(pairs, ranks)``: pairs has the group columns then
    :data:`PAIR_COLUMNS`; ranks has the group columns, ``row`` and :data:`RANK_COLUMNS`.
    """
    keys = [k for k in group if k in cells]
    cells = cells[cells[metric].notna()] if metric in cells else cells.iloc[0:0]
    pair_parts, rank_parts = [], []
    for key, g in (cells.groupby(keys, sort=False, dropna=False) if keys else [((), cells)] if len(cells) else []):
        key = key if isinstance(key, tuple) else (key,)
        pairs, ranks = compare_group(g, metric, row, alpha, n_resamples)
        for k, v in zip(keys, key):
            pairs.insert(keys.index(k), k, v)
            ranks.insert(keys.index(k), k, v)
        pair_parts.append(pairs)
        rank_parts.append(ranks)
    pairs = pd.concat(pair_parts, ignore_index=True) if pair_parts else pd.DataFrame(columns=keys + PAIR_COLUMNS)
    ranks = (pd.concat(rank_parts, ignore_index=True) if rank_parts
             else pd.DataFrame(columns=keys + [row] + RANK_COLUMNS))
    return pairs, ranks


def with_rank_intervals(board: pd.DataFrame, cells: pd.DataFrame, metric: str = "top1",
                        group: Sequence[str] = GROUP_KEYS, row: str = ROW_KEY) -> pd.DataFrame:
    """``board`` (one row per group × row) with :data:`RANK_COLUMNS` from :func:`compare` on ``cells``.

    Rows with nothing to rank (no finished value) get NaN ranks and ``tied_with_best`` False.
    """
    keys = [k for k in group if k in board and k in cells] + [row]
    _, ranks = compare(cells, metric, group, row)
    out = board.drop(columns=[c for c in RANK_COLUMNS if c in board]).merge(
        ranks[keys + RANK_COLUMNS], on=keys, how="left")
    out["tied_with_best"] = out["tied_with_best"].astype("boolean").fillna(False).astype(bool)
    out.index = board.index
    return out


# --------------------------------------------------------------------------- display


def _num(v: float, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _p(v: float) -> str:
    return "—" if v is None or math.isnan(v) else ("< 0.001" if v < 0.001 else f"{v:.3f}")


def display_pairs(pairs: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """The pairwise table for people (one group's rows; its group columns are left out)."""
    return pd.DataFrame({
        "A": pairs["row_a"].to_numpy(), "B": pairs["row_b"].to_numpy(),
        "pairs": [int(n) if p else f"unpaired ({a} vs {b})" for n, p, a, b in
                  zip(pairs["n_pairs"], pairs["paired"], pairs["n_a"], pairs["n_b"])],
        "Δ (A − B)": [_num(v, "+.2f") for v in pairs["diff"]],
        "95% CI": [f"[{_num(lo, '+.2f')}, {_num(hi, '+.2f')}]" for lo, hi in zip(pairs["ci_low"], pairs["ci_high"])],
        "test": pairs["test"].to_numpy(),
        "p": [_p(v) for v in pairs["p"]],
        "p sign-flip": [_p(v) for v in pairs["p_perm"]],
        "p Holm": [_p(v) + (" *" if v < alpha else "") for v in pairs["p_holm"]],
        "MDE": [_num(v, ".2f") for v in pairs["mde"]],
    })


def detectable_sentence(pairs: pd.DataFrame, alpha: float = ALPHA, power: float = POWER) -> str:
    """One sentence: the smallest difference this group's seeds could have detected."""
    d = detectable(pairs, alpha, power)
    if math.isnan(d["mde"]):
        return ("No paired comparison has 2 or more shared seeds with a spread: the suite cannot state the "
                "smallest difference it could detect.")
    text = (f"With {d['n']} paired seed(s) and a pooled sd of paired differences of {d['sd']:.2f} points, the "
            f"smallest difference a two-sided paired t-test detects with {power:.0%} power is {d['mde']:.2f} points "
            f"at α = {alpha:g}")
    if d["m"] <= 1:
        return text + "."
    return text + (f", and {d['mde_holm']:.2f} points at α = {alpha:g}/{d['m']} (what a comparison needs to "
                   f"survive Holm's first step over the {d['m']} comparisons).")


__all__ = ["Difference", "compare", "compare_group", "detectable", "detectable_sentence", "difference",
           "display_pairs", "holm", "mde_paired", "paired_difference", "paired_t_power", "rank_intervals",
           "sign_flip_p", "unit_columns", "welch_difference", "with_rank_intervals"]
