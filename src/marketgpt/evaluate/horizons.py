"""Multi-horizon evaluation of sample forecasts of the h-day cumulative log return r_h = ln(C_{t+h} / C_t).

Every forecaster (the model and the baselines of `horizon_baselines`) gives S samples of r_h per (asset, origin, h).
The per-row scores here are pure numpy and vectorised over rows; a row whose samples hold a NaN is a missing
forecast and scores NaN. `score_horizon_forecasts` turns a long table of rows into the `horizons` block (per
horizon: overall, per category, per asset); `plot_horizon_skill` and `horizon_report_lines` show it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import metrics as M
from ..baselines import MIN_TRAIN_GARCH, MIN_TRAIN_RW
from ..errors import MarketGPTError
from .horizon_baselines import MIN_BOOTSTRAP_WINDOWS, REFIT_EVERY
from .report import format_value, get_path, markdown_table
from .scoring import json_safe, mean_or_nan

PINBALL_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
INTERVAL_LEVELS = (0.5, 0.8, 0.95)
LABELS = {"model": "model", "random_walk": "RW", "garch_t": "GARCH-t", "bootstrap": "bootstrap"}
RECORD_COLUMNS = ("symbol", "category", "origin", "h", "y")


def horizon_definitions(refit_every: int = REFIT_EVERY) -> dict:
    """What each number of the `horizons` block means (for the results' definitions and the report)."""
    return {
        "horizon_return": "r_h = ln(C_{t+h} / C_t), the close's cumulative log return over h trading days after "
                          "the origin t; every forecaster gives S samples of it using data dated <= t only",
        "crps": "fair ensemble CRPS, mean |X - y| - sum_{i,j} |X_i - X_j| / (2 S (S - 1)) (unbiased for the CRPS of "
                "the distribution the S samples come from), log-return units, lower is better",
        "pinball": "per level tau, mean of max(tau (y - q), (tau - 1) (y - q)) with q the samples' empirical "
                   "quantile (np.quantile, linear interpolation)",
        "coverage": "share of rows with y inside the samples' central 50% / 80% / 95% interval (empirical quantiles)",
        "brier": "mean of (p_up - 1{y > 0})^2, p_up the share of samples > 0",
        "crps_skill": "1 - mean CRPS of the model / mean CRPS of the baseline on the rows where the baseline exists "
                      "(> 0: the model is better)",
        "dm": "Diebold-Mariano on d = CRPS_model - CRPS_baseline averaged over the group's assets per origin date; "
              "Newey-West HAC with h - 1 lags (overlapping h-day outcomes of daily origins are MA(h-1)); two-sided "
              "normal p-value; a negative statistic: the model is better",
        "random_walk": f"N(h mu, h sigma^2), mu and sigma of all the asset's daily log returns up to the origin "
                       f"(at least {MIN_TRAIN_RW})",
        "garch_t": f"GARCH(1,1)-t fitted on all the asset's returns up to the origin (at least {MIN_TRAIN_GARCH}), "
                   f"refitted every {refit_every} origins, the variance recursion run over the realised returns "
                   f"in between; S simulated paths",
        "bootstrap": f"draws from the asset's past overlapping h-day cumulative returns (at least "
                     f"{MIN_BOOTSTRAP_WINDOWS} windows)",
    }


def _check(samples, y) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if samples.ndim != 2 or samples.shape[1] < 2 or y.shape != samples.shape[:1]:
        raise MarketGPTError(f"samples must be (n, S >= 2) with y (n,), got {samples.shape} and {y.shape}")
    return samples, y


def _missing(samples: np.ndarray) -> np.ndarray:
    return np.isnan(samples).any(axis=1)


def crps_samples(samples, y) -> np.ndarray:
    """Fair CRPS per row (n,) in O(S log S): with the samples sorted, sum_{i,j} |X_i - X_j| =
    2 sum_k (2k - S - 1) X_(k) (k = 1..S), so the spread term is sum_k (2k - S - 1) X_(k) / (S (S - 1))."""
    samples, y = _check(samples, y)
    S = samples.shape[1]
    weights = (2 * np.arange(1, S + 1) - S - 1) / (S * (S - 1))
    out = np.abs(samples - y[:, None]).mean(axis=1) - np.sort(samples, axis=1) @ weights
    out[_missing(samples)] = np.nan
    return out


def sample_quantiles(samples, levels) -> np.ndarray:
    """Empirical quantiles (np.quantile, default linear method) per row, (n, L); NaN rows for missing forecasts."""
    samples = np.asarray(samples, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.float64)
    if not ((levels > 0) & (levels < 1)).all():
        raise MarketGPTError(f"quantile levels must be in (0, 1), got {levels.tolist()}")
    q = np.quantile(samples, levels, axis=1).T
    q[_missing(samples)] = np.nan
    return q


def _pinball_loss(q: np.ndarray, y: np.ndarray, levels) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64)
    u = y[:, None] - q
    return np.maximum(levels * u, (levels - 1) * u)


def _interval(level: float) -> tuple[float, float]:
    return (1 - level) / 2, (1 + level) / 2


def _inside(lo: np.ndarray, hi: np.ndarray, y: np.ndarray) -> np.ndarray:
    out = ((y >= lo) & (y <= hi)).astype(np.float64)
    out[np.isnan(lo)] = np.nan
    return out


def pinball(samples, y, levels=PINBALL_LEVELS) -> np.ndarray:
    """Pinball loss per row and level (n, L) of the samples' empirical quantiles at `levels`."""
    samples, y = _check(samples, y)
    return _pinball_loss(sample_quantiles(samples, levels), y, levels)


def interval_coverage(samples, y, level: float) -> np.ndarray:
    """Per row 1.0 when y lies in the samples' central `level` interval, else 0.0 (NaN when missing), (n,):
    its mean over rows is the coverage."""
    samples, y = _check(samples, y)
    return _inside(*sample_quantiles(samples, _interval(level)).T, y)


def prob_up(samples) -> np.ndarray:
    """Share of samples > 0 per row (n,), NaN when missing."""
    samples = np.asarray(samples, dtype=np.float64)
    out = (samples > 0).mean(axis=1)
    out[_missing(samples)] = np.nan
    return out


def brier(p_up, y) -> np.ndarray:
    """(p_up - 1{y > 0})^2 per row (n,), up meaning y > 0."""
    p_up = np.asarray(p_up, dtype=np.float64)
    return (p_up - (np.asarray(y, dtype=np.float64) > 0)) ** 2


def long_table(assets) -> tuple:
    """The long table `score_horizon_forecasts` takes, from per-asset arrays. Each item of `assets` is a dict:
    symbol, category, origins (n_o dates), horizons (n_h,), y (n_o, n_h) and samples {name: (n_o, n_h, S)}.
    Rows are (origin, h) in that order; rows with a NaN y (outcome past the data's end) are dropped.
    Returns (records DataFrame with RECORD_COLUMNS, {name: (n, S)})."""
    import pandas as pd

    frames, parts = [], {}
    for a in assets:
        y = np.asarray(a["y"], dtype=np.float64)
        origins, horizons = np.asarray(a["origins"]), np.asarray(a["horizons"])
        if y.shape != (len(origins), len(horizons)):
            raise MarketGPTError(f"{a['symbol']}: y is {y.shape}, expected ({len(origins)}, {len(horizons)})")
        if parts and set(a["samples"]) != set(parts):
            raise MarketGPTError(f"{a['symbol']}: forecasters {sorted(a['samples'])}, expected {sorted(parts)}")
        keep = np.isfinite(y).ravel()
        frames.append(pd.DataFrame({"symbol": a["symbol"], "category": a["category"],
                                    "origin": np.repeat(origins, len(horizons))[keep],
                                    "h": np.tile(horizons, len(origins))[keep], "y": y.ravel()[keep]}))
        for name, s in a["samples"].items():
            s = np.asarray(s, dtype=np.float64)
            if s.shape[:2] != y.shape:
                raise MarketGPTError(f"{a['symbol']}: {name} samples are {s.shape}, expected {y.shape} x S")
            parts.setdefault(name, []).append(s.reshape(-1, s.shape[2])[keep])
    if not frames:
        raise MarketGPTError("no assets to score")
    return pd.concat(frames, ignore_index=True), {k: np.concatenate(v) for k, v in parts.items()}


def _block(df, names: list[str], h: int) -> dict:
    """Scores of one group (all rows, a category or an asset) at horizon h."""
    block: dict = {"n": int(len(df))}
    for name in names:
        sub = df[df[f"{name}_crps"].notna()]
        block[name] = {"n": int(len(sub)), "crps": mean_or_nan(sub[f"{name}_crps"]),
                       "pinball": {f"{lv:g}": mean_or_nan(sub[f"{name}_pinball_{lv:g}"]) for lv in PINBALL_LEVELS},
                       **{f"coverage_{round(100 * lv)}": mean_or_nan(sub[f"{name}_coverage_{round(100 * lv)}"])
                          for lv in INTERVAL_LEVELS},
                       "brier": mean_or_nan(sub[f"{name}_brier"])}
    block["skill"], block["dm"] = {}, {}
    for b in names[1:]:
        sub = df[df[f"{b}_crps"].notna()]
        base = mean_or_nan(sub[f"{b}_crps"])
        block["skill"][f"crps_vs_{b}"] = 1.0 - mean_or_nan(sub["model_crps"]) / base if base > 0 else float("nan")
        block["dm"][f"vs_{b}"] = M.date_mean_diebold_mariano((sub["model_crps"] - sub[f"{b}_crps"]).to_numpy(),
                                                             sub["origin"].to_numpy(), lag=max(h - 1, 0)).to_dict()
    return block


def score_horizon_forecasts(records, samples: dict) -> dict:
    """The `horizons` block, JSON-safe: {str(h): {"overall": block, "per_category": {cat: block},
    "per_asset": {symbol: block + category}}}. `records` (pandas DataFrame) has one row per (symbol, category,
    origin, h) with the realised r_h in `y`; `samples` maps forecaster name -> (n, S) array aligned with the rows,
    "model" first-class and required, every other name a baseline (NaN rows where it has no forecast). A block
    holds n, per forecaster n / crps / pinball per level / coverage_50, _80, _95 / brier, and per baseline the
    model's CRPS skill and a Diebold-Mariano test (horizon_definitions)."""
    missing = [c for c in RECORD_COLUMNS if c not in records.columns]
    if missing:
        raise MarketGPTError(f"horizon records lack the columns {missing}")
    if "model" not in samples:
        raise MarketGPTError("horizon samples need the model's ('model')")
    df = records.loc[:, list(RECORD_COLUMNS)].reset_index(drop=True)
    y = df["y"].to_numpy(dtype=np.float64)
    if not np.isfinite(y).all():
        raise MarketGPTError("every horizon record needs a finite realised return y")
    names = ["model", *[k for k in samples if k != "model"]]
    # one np.quantile call per forecaster for all levels: the selection dominates the cost (measured on 22,400 rows
    # x 500 samples x 4 forecasters: 8.8 s with a call for the pinball levels and one per interval, 4-6 s with one)
    L, bounds = len(PINBALL_LEVELS), [b for lv in INTERVAL_LEVELS for b in _interval(lv)]
    cols = {}
    for name in names:
        s, _ = _check(samples[name], y)
        if name == "model" and _missing(s).any():
            raise MarketGPTError(f"the model has no samples for {int(_missing(s).sum())} horizon records")
        cols[f"{name}_crps"] = crps_samples(s, y)
        q = sample_quantiles(s, [*PINBALL_LEVELS, *bounds])
        pb = _pinball_loss(q[:, :L], y, PINBALL_LEVELS)
        for k, lv in enumerate(PINBALL_LEVELS):
            cols[f"{name}_pinball_{lv:g}"] = pb[:, k]
        for k, lv in enumerate(INTERVAL_LEVELS):
            cols[f"{name}_coverage_{round(100 * lv)}"] = _inside(q[:, L + 2 * k], q[:, L + 2 * k + 1], y)
        cols[f"{name}_brier"] = brier(prob_up(s), y)
    df = df.assign(**cols)
    out = {}
    for h, dh in df.groupby("h", sort=True):
        h = int(h)
        out[str(h)] = {"overall": _block(dh, names, h),
                       "per_category": {cat: _block(g, names, h) for cat, g in dh.groupby("category", sort=True)},
                       "per_asset": {sym: {**_block(g, names, h), "category": g["category"].iloc[0]}
                                     for sym, g in dh.groupby("symbol", sort=True)}}
    return json_safe(out)


def _baselines(block: dict) -> list[str]:
    return [k[len("crps_vs_"):] for k in block["skill"]]


def plot_horizon_skill(horizons_block: dict, path) -> Path:
    """PNG: the model's CRPS skill against each baseline (one panel each) per horizon, a line per category and a
    thick black one for all assets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hs = sorted(horizons_block, key=int)
    if not hs:
        raise MarketGPTError("no horizons to plot")
    first = horizons_block[hs[0]]
    baselines = _baselines(first["overall"])
    cats = sorted({c for h in hs for c in horizons_block[h]["per_category"]})
    fig, axes = plt.subplots(1, max(len(baselines), 1), figsize=(4.5 * max(len(baselines), 1), 3.8), squeeze=False)
    x = [int(h) for h in hs]

    def skill(block, b):
        v = get_path(block, ("skill", f"crps_vs_{b}")) if block else None
        return np.nan if v is None else v

    for ax, b in zip(axes[0], baselines):
        for cat in cats:
            ax.plot(x, [skill(horizons_block[h]["per_category"].get(cat), b) for h in hs], "o-", lw=1, label=cat)
        ax.plot(x, [skill(horizons_block[h]["overall"], b) for h in hs], "o-", color="black", lw=2.5, label="all")
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set(xlabel="horizon h (days)", ylabel="CRPS skill (> 0: model better)", title=f"vs {LABELS.get(b, b)}")
        ax.set_xticks(x)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def horizon_columns(block: dict) -> list[tuple]:
    """(header, path inside a block, format) of a horizon table, for the forecasters present in `block`."""
    baselines = _baselines(block)
    names = ["model", *baselines]
    label = {k: LABELS.get(k, k) for k in names}
    return ([("n", ("n",), "d")]
            + [(f"n {label[b]}", (b, "n"), "d") for b in baselines if block[b]["n"] < block["n"]]
            + [(f"CRPS {label[k]}", (k, "crps"), ".6f") for k in names]
            + [(f"skill vs {label[b]}", ("skill", f"crps_vs_{b}"), "+.4f") for b in baselines]
            + [(f"DM p ({label[b]})", ("dm", f"vs_{b}", "p_value"), ".3g") for b in baselines]
            + [(f"cov80 {label[k]}", (k, "coverage_80"), ".3f") for k in names]
            + [(f"Brier {label[k]}", (k, "brier"), ".4f") for k in names])


def horizon_report_lines(horizons_block: dict, plot: str | None = None, garch: dict | None = None) -> list[str]:
    """Markdown lines of the report's multi-horizon section: a table per horizon (all, each category, each asset),
    the skill plot if given (a file name next to the report), and, from {symbol: garch_t_samples info}, the assets
    with origins lacking a GARCH-t forecast."""
    out = ["## Multi-horizon forecasts of the cumulative close return", "",
           "CRPS in log-return units; skill = 1 - CRPS model / CRPS baseline on the rows where the baseline exists; "
           "DM p: two-sided Diebold-Mariano on the CRPS difference (per origin date, h - 1 HAC lags).", ""]
    for h in sorted(horizons_block, key=int):
        hb = horizons_block[h]
        columns = horizon_columns(hb["overall"])
        groups = ([("all", hb["overall"])] + [(f"{c} (category)", b) for c, b in hb["per_category"].items()]
                  + list(hb["per_asset"].items()))
        rows = [[label, *[format_value(get_path(block, p), f) for _, p, f in columns]] for label, block in groups]
        out += [f"### h = {h} day{'s' if int(h) > 1 else ''}", "",
                markdown_table(["group", *[c[0] for c in columns]], rows), ""]
    if plot:
        out += ["### CRPS skill per horizon", "", f"![CRPS skill per horizon]({plot})", ""]
    short = {s: i for s, i in (garch or {}).items() if i["missing"]}
    if short:
        out += ["Origins without a GARCH-t forecast (left out of every GARCH-t comparison):", ""]
        for s, i in short.items():
            reasons = sorted({f["unusable"] for f in i["fits"] if "unusable" in f})
            why = f": {'; '.join(reasons)}" if reasons else ""
            out.append(f"- {s}: {i['missing']} of {i['origins']} origins ({i['too_short']} with fewer than "
                       f"{MIN_TRAIN_GARCH} past returns, {i['unusable_fit']} under an unusable fit{why})")
        out.append("")
    return out
