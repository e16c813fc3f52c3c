"""One-step scoring: every target of a split scored once, token metrics per channel against unigram and
persistence, and the close return's density against a Gaussian random walk and GARCH(1,1)-t."""

from __future__ import annotations

import math
import time

from ..density import TAIL_RULE, CloseDensity
from ..errors import MarketGPTError

SPLITS = ("test", "val")


COVERAGE_LEVELS = (0.8, 0.5)


PIT_BINS = 10


BASELINES = ("random_walk", "garch_t", "garch_t_expanding")


BASELINE_NAMES = {"random_walk": "RW", "garch_t": "GARCH-t", "garch_t_expanding": "GARCH-t expanding"}


TOKEN_BASELINES = ("unigram", "unigram_per_asset", "persistence")
#: multi-horizon evaluation defaults (see multi_horizon.py)
DEFAULT_HORIZONS = (1, 5, 21)
DEFAULT_EVERY = 21
DEFAULT_SAMPLES = 100


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise MarketGPTError(f"--split must be 'test' or 'val', got '{split}'")
    return split


def model_batches(model, store, windows, context_length: int, batch_size: int = 32, device=None):
    """Run `model` (any callable (tokens, asset, category, targets, **inputs) -> (logits (B,T,C,V), loss)) over the
    windows, batch_size at a time, under inference mode: yields (windows, mask (B, T), logits (n, C, V) float32,
    targets (n, C)) of each batch's scored targets, each target once. inputs are dataset.gather_inputs': the weekdays,
    and a store's scale; the model takes those it uses."""
    import torch

    from ..dataset import gather, gather_inputs

    if device is None:
        params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = params.device if params is not None else torch.device("cpu")
    device = torch.device(device)
    categories = torch.as_tensor(store.category_ids)
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            w = windows[i:i + batch_size]
            x, y, mask, asset = gather(store, w, context_length)
            asset_t = torch.from_numpy(asset)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            extra = {k: torch.from_numpy(v).to(device) for k, v in gather_inputs(store, w, context_length).items()}
            logits, _ = model(xt, asset_t.to(device), categories[asset_t].to(device), yt, **extra)
            m = torch.from_numpy(mask).to(device)
            yield w, mask, logits[m].float(), yt[m]


def score_model(model, store, windows, context_length: int, density: CloseDensity, returns, batch_size: int = 32,
                device=None, levels=()) -> dict:
    """Run `model` (see model_batches) over the windows and score every target once. Per scored target (arrays in
    row order): row, nll (n, C) and hit (n, C) per channel (token level), and for the close return y: nll, crps,
    pit = F(y), p_up = P(y > 0). With quantile `levels`, also the density's forecast itself: quantiles (n, L), mean
    (E[y]) and gross (E[exp y]). With a scale (store.sigma), the close head's density is of z = y / sigma and the
    return figures carry the Jacobian (density.py), so they are in return units, comparable with the baselines'."""
    import numpy as np
    import torch

    offsets = np.arange(1, context_length + 1)
    names = ("row", "nll", "hit", "ret_nll", "ret_crps", "pit", "p_up") + (("quantiles", "mean", "gross") if levels else ())
    parts: dict[str, list] = {k: [] for k in names}
    with torch.inference_mode():
        for w, mask, lg, tg in model_batches(model, store, windows, context_length, batch_size, device):
            logp = torch.log_softmax(lg, dim=-1)
            parts["nll"].append((-logp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)).double().cpu().numpy())
            parts["hit"].append((lg.argmax(-1) == tg).cpu().numpy())
            probs = torch.softmax(lg[:, 0].double(), dim=-1).cpu().numpy()      # close head: context only
            rows = (w[:, :1] + offsets)[mask]
            yv = returns[rows]
            sg = None if store.sigma is None else np.asarray(store.sigma[rows])
            parts["row"].append(rows)
            parts["ret_nll"].append(density.nll(probs, yv, sg))
            parts["ret_crps"].append(density.crps(probs, yv, sg))
            parts["pit"].append(density.cdf(probs, yv, sg))
            parts["p_up"].append(1.0 - density.cdf(probs, np.zeros(len(yv))))
            if levels:
                parts["quantiles"].append(np.stack([density.ppf(probs, q, sg) for q in levels], axis=1))
                parts["mean"].append(density.mean(probs, sg))
                parts["gross"].append(density.gross_mean(probs, sg))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    order = np.argsort(out["row"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def token_baselines(store, rows, vocab_size: int) -> tuple[dict, list]:
    """{name: (nll (n, C), hit (n, C))} for the token-level baselines on `rows`, and persistence's weights."""
    from ..baselines import persistence_scores, persistence_weight, unigram_probs, unigram_scores

    uni = unigram_probs(store, vocab_size)
    weight = persistence_weight(store, vocab_size, uni)
    return ({"unigram": unigram_scores(store, rows, vocab_size, probs=uni),
             "unigram_per_asset": unigram_scores(store, rows, vocab_size, per_asset=True),
             "persistence": persistence_scores(store, rows, vocab_size, weight=weight, unigram=uni)},
            [float(x) for x in weight])


def return_baselines(store, returns, scored: int) -> tuple[dict, dict, dict]:
    """Per store row, the baselines' NLL/CRPS/PIT columns for the close return (the expanding-window GARCH-t on
    the rows of split index `scored` only), the training-period GARCH fits per asset, and the expanding fits' counts
    per asset."""
    import numpy as np

    from .. import metrics as M
    from ..baselines import garch_t, garch_t_expanding, random_walk

    split, asset = np.asarray(store.split), np.asarray(store.asset)
    n_assets = len(store.symbols)
    cols = {}

    def add(name: str, dist: str, *params) -> None:
        ok = np.isfinite(params[1])
        fns = {"gaussian": (M.gaussian_nll, M.gaussian_crps, M.gaussian_cdf),
               "student_t": (M.student_t_nll, M.student_t_crps, M.student_t_cdf)}[dist]
        for metric, fn in zip(("nll", "crps", "pit"), fns):
            col = np.full(len(returns), np.nan)
            col[ok] = fn(returns[ok], *(p[ok] for p in params))
            cols[f"{name}_{metric}"] = col

    add("random_walk", "gaussian", *random_walk(returns, split, asset, n_assets))
    loc, scale, df, fits = garch_t(returns, split, asset, n_assets)
    add("garch_t", "student_t", loc, scale, df)
    loc, scale, df, expanding = garch_t_expanding(returns, split, asset, n_assets, scored)
    add("garch_t_expanding", "student_t", loc, scale, df)
    garch = {store.symbols[a]: p for a, p in fits.items()}
    return cols, garch, {store.symbols[a]: i for a, i in expanding.items()}


def mean_or_nan(x) -> float:
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def return_block(df) -> dict:
    """Metrics of the close return over the rows of `df` (one group: all, a category or an asset)."""

    from .. import metrics as M

    y = df["y"].to_numpy()
    block = {"n": int(len(df)), "model": {"nll": mean_or_nan(df["model_nll"]), "crps": mean_or_nan(df["model_crps"])}}
    pit = df["model_pit"].to_numpy()
    for level in COVERAGE_LEVELS:
        block["model"][f"coverage_{round(100 * level)}"] = M.coverage(pit, level)
    block["model"]["pit_histogram"] = M.pit_histogram(pit, PIT_BINS).tolist()
    block["skill"], block["dm"], block["dm_pooled"] = {}, {}, {}
    for b in BASELINES:
        ok = df[f"{b}_nll"].notna().to_numpy()
        sub = df[ok]
        bb = {"n": int(ok.sum()), "nll": mean_or_nan(sub[f"{b}_nll"]), "crps": mean_or_nan(sub[f"{b}_crps"])}
        for level in COVERAGE_LEVELS:
            bb[f"coverage_{round(100 * level)}"] = M.coverage(sub[f"{b}_pit"].to_numpy(), level)
        bb["pit_histogram"] = M.pit_histogram(sub[f"{b}_pit"].to_numpy(), PIT_BINS).tolist() if len(sub) else None
        block[b] = bb
        model_nll, model_crps = mean_or_nan(sub["model_nll"]), mean_or_nan(sub["model_crps"])
        block["skill"][f"nll_vs_{b}"] = bb["nll"] - model_nll if len(sub) else float("nan")
        block["skill"][f"crps_vs_{b}"] = 1.0 - model_crps / bb["crps"] if len(sub) and bb["crps"] > 0 else float("nan")
        diff, dates = (sub["model_nll"] - sub[f"{b}_nll"]).to_numpy(), sub["date"].to_numpy()
        block["dm"][f"vs_{b}"] = M.date_mean_diebold_mariano(diff, dates).to_dict()
        block["dm_pooled"][f"vs_{b}"] = M.pooled_diebold_mariano(diff, dates).to_dict()
    up_pred = df["p_up"].to_numpy() > 0.5
    hits = int((up_pred == (y > 0)).sum())
    lo, hi = M.wilson_interval(hits, len(y))
    block["direction"] = {"hit_rate": hits / len(y) if len(y) else float("nan"), "wilson_95": [lo, hi],
                          "always_up": float((y > 0).mean()) if len(y) else float("nan"),
                          "predicted_up_share": float(up_pred.mean()) if len(y) else float("nan")}
    return block


def summarize(store, scores: dict, returns, split: str, vocab_size: int, channels: list[str], log=print) -> dict:
    """The results dict (without run metadata) from the model's per-target scores."""
    import numpy as np
    import pandas as pd

    rows = scores["row"]
    C = len(channels)
    results: dict = {"split": split, "targets": int(len(rows))}
    # --- token level, per channel ---
    t0 = time.time()
    tok, weight = token_baselines(store, rows, vocab_size)
    model_nll = scores["nll"].mean(0) if len(rows) else np.full(C, np.nan)
    model_acc = scores["hit"].mean(0) if len(rows) else np.full(C, np.nan)
    results[f"{split}_loss"] = float(model_nll.mean())
    results[f"{split}_accuracy"] = float(model_acc.mean())
    results["unigram_loss"] = float(tok["unigram"][0].mean()) if len(rows) else float("nan")
    results["channels"] = {}
    for c, name in enumerate(channels):
        entry = {"model": {"nll": float(model_nll[c]), "accuracy": float(model_acc[c])}}
        for b in TOKEN_BASELINES:
            nll, hit = tok[b]
            entry[b] = {"nll": mean_or_nan(nll[:, c]), "accuracy": mean_or_nan(hit[:, c])}
        results["channels"][name] = entry
    results["persistence_weight"] = dict(zip(channels, weight))
    # --- the close return ---
    t1 = time.time()
    from ..baselines import MIN_TRAIN_GARCH, REFIT_EVERY_DAYS
    from ..data import SPLITS as STORE_SPLITS

    cols, garch, expanding = return_baselines(store, returns, STORE_SPLITS.index(split))
    asset = np.asarray(store.asset)[rows]
    df = pd.DataFrame({"row": rows, "asset": asset, "date": store.dates[rows], "y": returns[rows],
                       "model_nll": scores["ret_nll"], "model_crps": scores["ret_crps"], "model_pit": scores["pit"],
                       "p_up": scores["p_up"], **{k: v[rows] for k, v in cols.items()}})
    df["symbol"] = np.asarray(store.symbols, dtype=object)[asset]
    df["category"] = np.asarray(store.categories, dtype=object)[asset]
    ret: dict = {"overall": return_block(df), "per_category": {}, "per_asset": {}}
    for cat, sub in df.groupby("category", sort=True):
        ret["per_category"][cat] = return_block(sub)
    for symbol in store.symbols:
        sub = df[df.symbol == symbol]
        if not len(sub):
            continue
        block = return_block(sub)
        block["category"] = store.categories[store.symbols.index(symbol)]
        g = block["garch_t"]
        block["beats_garch_t_nll"] = bool(block["model"]["nll"] < g["nll"]) if g["n"] else None
        fit = garch[symbol]
        block["garch_t_params"] = (None if "unusable" in fit else
                                   {k: fit[k] for k in ("mu", "omega", "alpha", "beta", "nu", "convergence_flag", "n_train")})
        block["garch_t_unusable"] = fit.get("unusable")
        g = block["garch_t_expanding"]
        block["beats_garch_t_expanding_nll"] = bool(block["model"]["nll"] < g["nll"]) if g["n"] else None
        block["garch_t_expanding_fits"] = expanding.get(symbol)
        ret["per_asset"][symbol] = block
    results["returns"] = ret
    results["headline"] = {}
    for b in ("garch_t", "garch_t_expanding"):
        compared = [a[f"beats_{b}_nll"] for a in ret["per_asset"].values() if a[f"beats_{b}_nll"] is not None]
        results["headline"] |= {f"assets_beating_{b}_nll": int(sum(compared)), f"assets_with_{b}": len(compared),
                                f"share_beating_{b}_nll": sum(compared) / len(compared) if compared else float("nan")}
    results["headline"] |= {
        "nll_skill_vs_garch_t": ret["overall"]["skill"]["nll_vs_garch_t"],
        "crps_skill_vs_garch_t": ret["overall"]["skill"]["crps_vs_garch_t"],
        "nll_skill_vs_random_walk": ret["overall"]["skill"]["nll_vs_random_walk"],
        "crps_skill_vs_random_walk": ret["overall"]["skill"]["crps_vs_random_walk"],
        "nll_skill_vs_garch_t_expanding": ret["overall"]["skill"]["nll_vs_garch_t_expanding"],
        "crps_skill_vs_garch_t_expanding": ret["overall"]["skill"]["crps_vs_garch_t_expanding"],
    }
    results["definitions"] = {
        "loss": "mean cross-entropy over channels and targets (nats per token), as in training",
        "return": "close-to-close log return ln(C_t/C_{t-1}); NLL in nats per day and CRPS in log-return units",
        "tail_rule": TAIL_RULE,
        "nll_skill": "mean NLL of the baseline - mean NLL of the model on the days where the baseline exists "
                     "(nats per day; > 0: the model is better)",
        "crps_skill": "1 - mean CRPS of the model / mean CRPS of the baseline (> 0: the model is better)",
        "dm": "Diebold-Mariano on d = NLL_model - NLL_baseline averaged over the group's assets per date; "
              "Newey-West HAC, lag floor(4 (n/100)^(2/9)); two-sided normal p-value; < 0: the model is better",
        "dm_pooled": "Diebold-Mariano of the mean of d over all the group's asset-days (the mean nll_skill tests): "
                     "per-date sums of d over the mean count per date, HAC across dates as for dm (each date's "
                     "assets one cluster); it and dm differ where dates hold different numbers of assets",
        "direction": "up when P(y > 0) > 0.5 under the model; hit when up matches y > 0; Wilson 95% interval",
        "coverage": "share of days with y inside the central 80% / 50% interval (PIT within [0.1, 0.9] / [0.25, 0.75])",
        "persistence": "point forecast: previous candle's token; NLL of lambda * point mass + (1 - lambda) * "
                       "training unigram, lambda per channel fitted on the training period (persistence_weight)",
        "random_walk": "per asset N(mean, std) of its training-period close returns",
        "garch_t": "per asset GARCH(1,1) with standardized Student-t errors and constant mean on 100 x the "
                   "training-period returns (arch); parameters fixed, variance run forward over later days with "
                   "realised past returns only (no refit on val/test)",
        "garch_t_expanding": "the same GARCH(1,1)-t refitted on all the asset's returns before the scored day "
                             f"(expanding window, at least {MIN_TRAIN_GARCH} returns), refitted every "
                             f"{REFIT_EVERY_DAYS} scored days (baselines.garch_t_expanding)",
    }
    log(f"scored baselines in {time.time() - t0:.1f}s (GARCH and random walk {time.time() - t1:.1f}s)")
    return results


def json_safe(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def results_name(split: str) -> str:
    return f"{check_split(split)}_results.json"
