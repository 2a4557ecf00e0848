"""The "which rows can the suite tell apart" section of a report, built on :mod:`kdbench.results.stats`.

For each (suite, dataset, pair) group of the board: the rank interval of every
row and whether it is tied with the best, the table of pairwise comparisons
(paired Δ, 95% CI, paired-t p, sign-flip p, Holm-adjusted p, detectable
difference) and one sentence stating the smallest difference the group's
seeds could have detected.
"""
from __future__ import annotations

import math

import pandas as pd

from kdbench.results import stats
from kdbench.results.leaderboards import split_fixed, to_markdown

GROUP = ["suite", "dataset", "pair"]
PAIR_KEY_COLUMNS = ("A", "B", "Δ (A − B)", "95% CI", "p", "p Holm")


def _how_to_read(units: list[str], alpha: float) -> str:
    unit = "(teacher seed, student seed)" if units == ["teacher_seed", "seed"] else "seed"
    return (f"Every pair of rows of a dataset × pair table, A ranked above B. Δ is A − B paired by {unit} "
            "(the mean of the per-unit differences; \"unpaired\" rows share under 2 units and fall back to Welch's "
            "t on all their values). 95% CI and p are from the paired t-test, the test the ranks use; "
            f"p Holm is Holm-corrected over the table's comparisons, * marks p Holm < {alpha:g}. The sign-flip p "
            "(exact permutation of the paired differences) is a distribution-free check; it cannot go below "
            "2/2^n (0.25 at 3 seeds), so at few seeds it never rejects. MDE: the smallest true Δ the paired t-test "
            f"detects with {stats.POWER:.0%} power at α = {alpha:g} for that pair's n and sd (noncentral t). "
            "Rank interval: the ranks a row could hold given the corrected tests (best = 1 + rows significantly "
            "better, worst = n − rows significantly worse); tied with best: not significantly below the top row.")


def rank_view(board: pd.DataFrame) -> pd.DataFrame:
    """One group's rows: method, top-1, rank interval, tied with best."""
    def interval(lo: float, hi: float) -> str:
        if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
            return "—"
        return f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}"

    return pd.DataFrame({
        "method": board["method"].to_numpy(),
        "top-1": ["—" if math.isnan(v) else f"{v:.2f}" for v in board["top1_mean"].astype(float)],
        "rank interval": [interval(lo, hi) for lo, hi in zip(board["rank_low"], board["rank_high"])],
        "tied with best": ["✓" if t is True or t == 1 else "" for t in board["tied_with_best"]],
    })


def sections(board: pd.DataFrame, pairs: pd.DataFrame, cells: pd.DataFrame,
             alpha: float = stats.ALPHA) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """(HTML tables, README markdown lines) of the comparisons section, one subsection per group."""
    if board.empty or "rank_low" not in board:
        return [], []
    tables: list[tuple[str, pd.DataFrame]] = []
    md = ["## Pairwise comparisons and rank intervals", "", _how_to_read(stats.unit_columns(cells), alpha), ""]
    keys = [k for k in GROUP if k in board]
    for key, g in board.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        where = dict(zip(keys, key))
        p = pairs
        for k, v in where.items():
            p = p[(p[k] == v) | (p[k].isna() & pd.isna(v))] if k in p else p
        title = f"{where.get('pair', '?')} on {where.get('dataset', '?')}"
        sentence = stats.detectable_sentence(p, alpha)
        mde = stats.detectable(p, alpha)["mde"]
        # the same on every row (pairs, test at equal seeds): said once above the table
        shown = split_fixed(stats.display_pairs(p, alpha), keep=PAIR_KEY_COLUMNS)
        tables.append((f"Rank intervals: {title}", rank_view(g)))
        detect = "—" if math.isnan(mde) else f"{mde:.2f}"
        tables.append((f"Pairwise comparisons: {title} (detectable difference {detect} points)", shown))
        md += [f"### {title}", "", sentence, "", to_markdown(rank_view(g))]
        md += [to_markdown(shown) if len(shown) else "Fewer than two rows with results: nothing to compare.\n"]
    return tables, md


__all__ = ["rank_view", "sections"]
