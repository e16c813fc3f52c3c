"""Honest evaluation of a run: per-channel token metrics against unigram and persistence, and the close-to-close
return's one-step predictive density against a Gaussian random walk and GARCH(1,1)-t, with plots and a report.

Python API: `evaluate_run`, `compare_runs`, `format_compare`, `headline`, `write_report`, `make_plots`, and the
building blocks `load_run`, `close_density`, `score_model`, `summarize`.
Command line: `marketgpt evaluate RUN_DIR [--split test|val]`, `marketgpt compare RUN_DIR...`.

Definitions (also written into every report)
- Close-to-close return y = ln(C_t / C_{t-1}) (the tokenizer's close feature), true value from the candles.
- Model density of y: the close head's probabilities (close is predicted first, from the context only), spread
  uniformly over each bin's width; TAIL_RULE for the two open-ended outer bins.
- NLL: -log density of y, nats per day, in log-return units for every forecaster (lower is better).
  CRPS: in log-return units (lower is better).
- Skill against a baseline b, on the days where b exists: NLL skill = mean NLL_b - mean NLL_model (nats per
  day, > 0: the model is better); CRPS skill = 1 - mean CRPS_model / mean CRPS_b (> 0: the model is better).
- Diebold-Mariano on the per-day log-score difference d = NLL_model - NLL_b (mean over the group's assets on each
  date, so cross-asset correlation on a day is handled), Newey-West HAC variance, two-sided normal p-value;
  a negative statistic means the model has the lower NLL.
- Direction: "up" when P(y > 0) > 0.5 under the model's density; a hit when that matches y > 0 (a flat day,
  y = 0, counts as not up). Wilson 95% interval; compare with 50% and with "always up" (the share of up days).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .config import read_json
from .errors import MarketGPTError

SPLITS = ("test", "val")
COVERAGE_LEVELS = (0.8, 0.5)
PIT_BINS = 10
BASELINES = ("random_walk", "garch_t")
BASELINE_NAMES = {"random_walk": "RW", "garch_t": "GARCH-t"}
TOKEN_BASELINES = ("unigram", "unigram_per_asset", "persistence")
TAIL_RULE = ("each open-ended outer bin of the close channel gets an exponential tail hanging off its finite edge, "
             "whose median distance from the edge equals the training median's distance in that bin (the bin's "
             "decode value): scale s = d / ln 2, at least the width of the neighbouring inner bin")


# ---------------------------------------------------------------------------------------------------
# the model's predictive density of the close return
# ---------------------------------------------------------------------------------------------------
class CloseDensity:
    """Piecewise-uniform density over the close channel's bins with exponential outer tails (TAIL_RULE)."""

    def __init__(self, inner_edges, values):
        import numpy as np

        e = np.asarray(inner_edges, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        if e.ndim != 1 or v.shape != (e.size + 1,) or e.size < 1:
            raise MarketGPTError(f"close bins: expected V-1 edges and V values, got {e.shape} and {v.shape}")
        self.edges = np.concatenate([[-np.inf], e, [np.inf]])
        floor_lo = e[1] - e[0] if e.size > 1 else 1e-8
        floor_hi = e[-1] - e[-2] if e.size > 1 else 1e-8
        self.tail_scale = (max((e[0] - v[0]) / math.log(2), floor_lo), max((v[-1] - e[-1]) / math.log(2), floor_hi))

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "CloseDensity":
        return cls(tokenizer.bin_edges("close"), tokenizer.bin_values("close"))

    def nll(self, probs, y):
        from .metrics import binned_nll
        return binned_nll(probs, self.edges, y, self.tail_scale)

    def crps(self, probs, y):
        from .metrics import binned_crps
        return binned_crps(probs, self.edges, y, self.tail_scale)

    def cdf(self, probs, y):
        from .metrics import binned_cdf
        return binned_cdf(probs, self.edges, y, self.tail_scale)

    def ppf(self, probs, q):
        from .metrics import binned_ppf
        return binned_ppf(probs, self.edges, q, self.tail_scale)


def close_density(tokenizer) -> CloseDensity:
    return CloseDensity.from_tokenizer(tokenizer)


# ---------------------------------------------------------------------------------------------------
# loading a run
# ---------------------------------------------------------------------------------------------------
def check_split(split: str) -> str:
    if split not in SPLITS:
        raise MarketGPTError(f"--split must be 'test' or 'val', got '{split}'")
    return split


def check_run_dir(run_dir) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MarketGPTError(f"{run_dir}: run directory not found")
    for name in ("config.json", "tokenizer.json", "best_model.pt"):
        if not (run_dir / name).exists():
            raise MarketGPTError(f"{run_dir}: no {name} (not a finished run directory?)")
    if not (run_dir / "tokens" / "assets.json").exists():
        raise MarketGPTError(f"{run_dir}: no token store (tokens/)")
    return run_dir


def load_run(run_dir, device=None):
    """(config, tokenizer, token store, model in eval mode on `device`, best checkpoint's epoch)."""
    import torch

    from .checkpoint import load_checkpoint
    from .dataset import TokenStore
    from .model import MarketGPT
    from .tokenizer import CandleTokenizer
    from .train import read_run_config

    run_dir = check_run_dir(run_dir)
    cfg = read_run_config(run_dir)
    tokenizer = CandleTokenizer.load(run_dir / "tokenizer.json")
    store = TokenStore.load(run_dir / "tokens")
    ckpt = load_checkpoint(run_dir / "best_model.pt")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = MarketGPT(cfg.model, store.tokens.shape[1], len(store.symbols), len(store.category_names))
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as exc:
        raise MarketGPTError(f"{run_dir / 'best_model.pt'}: weights do not fit the run's model "
                             f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return cfg, tokenizer, store, model, ckpt.get("epoch")


# ---------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------
def score_model(model, store, windows, context_length: int, density: CloseDensity, returns, batch_size: int = 32,
                device=None) -> dict:
    """Run `model` (any callable (tokens, asset, category, targets) -> (logits (B,T,C,V), loss)) over the windows
    and score every target once. Per scored target (arrays in row order): row, nll (n, C) and hit (n, C) per
    channel (token level), and for the close return y: nll, crps, pit = F(y), p_up = P(y > 0)."""
    import numpy as np
    import torch

    from .dataset import gather

    if device is None:
        params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = params.device if params is not None else torch.device("cpu")
    device = torch.device(device)
    categories = torch.as_tensor(store.category_ids)
    offsets = np.arange(1, context_length + 1)
    parts: dict[str, list] = {k: [] for k in ("row", "nll", "hit", "ret_nll", "ret_crps", "pit", "p_up")}
    with torch.inference_mode():
        for i in range(0, len(windows), batch_size):
            w = windows[i:i + batch_size]
            x, y, mask, asset = gather(store, w, context_length)
            asset_t = torch.from_numpy(asset)
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            logits, _ = model(xt, asset_t.to(device), categories[asset_t].to(device), yt)
            m = torch.from_numpy(mask).to(device)
            lg = logits[m].float()                                              # (n, C, V)
            tg = yt[m]                                                          # (n, C)
            logp = torch.log_softmax(lg, dim=-1)
            parts["nll"].append((-logp.gather(-1, tg.unsqueeze(-1)).squeeze(-1)).double().cpu().numpy())
            parts["hit"].append((lg.argmax(-1) == tg).cpu().numpy())
            probs = torch.softmax(lg[:, 0].double(), dim=-1).cpu().numpy()      # close head: context only
            rows = (w[:, :1] + offsets)[mask]
            yv = returns[rows]
            parts["row"].append(rows)
            parts["ret_nll"].append(density.nll(probs, yv))
            parts["ret_crps"].append(density.crps(probs, yv))
            parts["pit"].append(density.cdf(probs, yv))
            parts["p_up"].append(1.0 - density.cdf(probs, np.zeros(len(yv))))
    out = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
    order = np.argsort(out["row"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def token_baselines(store, rows, vocab_size: int) -> tuple[dict, list]:
    """{name: (nll (n, C), hit (n, C))} for the token-level baselines on `rows`, and persistence's weights."""
    from .baselines import persistence_scores, persistence_weight, unigram_probs, unigram_scores

    uni = unigram_probs(store, vocab_size)
    weight = persistence_weight(store, vocab_size, uni)
    return ({"unigram": unigram_scores(store, rows, vocab_size, probs=uni),
             "unigram_per_asset": unigram_scores(store, rows, vocab_size, per_asset=True),
             "persistence": persistence_scores(store, rows, vocab_size, weight=weight, unigram=uni)},
            [float(x) for x in weight])


def return_baselines(store, returns) -> tuple[dict, dict]:
    """Per store row, the baselines' NLL/CRPS/PIT columns for the close return, and GARCH fits per asset."""
    import numpy as np

    from . import metrics as M
    from .baselines import garch_t, random_walk

    split, asset = np.asarray(store.split), np.asarray(store.asset)
    n_assets = len(store.symbols)
    cols = {}
    loc, scale = random_walk(returns, split, asset, n_assets)
    ok = np.isfinite(scale)
    for name, fn in (("nll", M.gaussian_nll), ("crps", M.gaussian_crps), ("pit", M.gaussian_cdf)):
        col = np.full(len(returns), np.nan)
        col[ok] = fn(returns[ok], loc[ok], scale[ok])
        cols[f"random_walk_{name}"] = col
    loc, scale, df, fits = garch_t(returns, split, asset, n_assets)
    ok = np.isfinite(scale)
    for name, fn in (("nll", M.student_t_nll), ("crps", M.student_t_crps), ("pit", M.student_t_cdf)):
        col = np.full(len(returns), np.nan)
        col[ok] = fn(returns[ok], loc[ok], scale[ok], df[ok])
        cols[f"garch_t_{name}"] = col
    garch = {store.symbols[a]: p for a, p in fits.items()}
    return cols, garch


def _mean(x) -> float:
    import numpy as np
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def return_block(df) -> dict:
    """Metrics of the close return over the rows of `df` (one group: all, a category or an asset)."""
    import numpy as np

    from . import metrics as M

    y = df["y"].to_numpy()
    block = {"n": int(len(df)), "model": {"nll": _mean(df["model_nll"]), "crps": _mean(df["model_crps"])}}
    pit = df["model_pit"].to_numpy()
    for level in COVERAGE_LEVELS:
        block["model"][f"coverage_{round(100 * level)}"] = M.coverage(pit, level)
    block["model"]["pit_histogram"] = M.pit_histogram(pit, PIT_BINS).tolist()
    block["skill"], block["dm"] = {}, {}
    for b in BASELINES:
        ok = df[f"{b}_nll"].notna().to_numpy()
        sub = df[ok]
        bb = {"n": int(ok.sum()), "nll": _mean(sub[f"{b}_nll"]), "crps": _mean(sub[f"{b}_crps"])}
        for level in COVERAGE_LEVELS:
            bb[f"coverage_{round(100 * level)}"] = M.coverage(sub[f"{b}_pit"].to_numpy(), level)
        bb["pit_histogram"] = M.pit_histogram(sub[f"{b}_pit"].to_numpy(), PIT_BINS).tolist() if len(sub) else None
        block[b] = bb
        model_nll, model_crps = _mean(sub["model_nll"]), _mean(sub["model_crps"])
        block["skill"][f"nll_vs_{b}"] = bb["nll"] - model_nll if len(sub) else float("nan")
        block["skill"][f"crps_vs_{b}"] = 1.0 - model_crps / bb["crps"] if len(sub) and bb["crps"] > 0 else float("nan")
        d = (sub["model_nll"] - sub[f"{b}_nll"]).groupby(sub["date"]).mean().sort_index().to_numpy()
        block["dm"][f"vs_{b}"] = M.diebold_mariano(d, np.zeros_like(d)).to_dict()
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
            entry[b] = {"nll": _mean(nll[:, c]), "accuracy": _mean(hit[:, c])}
        results["channels"][name] = entry
    results["persistence_weight"] = dict(zip(channels, weight))
    # --- the close return ---
    t1 = time.time()
    cols, garch = return_baselines(store, returns)
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
        ret["per_asset"][symbol] = block
    compared = [b for b in ret["per_asset"].values() if b["beats_garch_t_nll"] is not None]
    wins = sum(b["beats_garch_t_nll"] for b in compared)
    results["returns"] = ret
    results["headline"] = {
        "assets_beating_garch_t_nll": int(wins), "assets_with_garch_t": len(compared),
        "share_beating_garch_t_nll": wins / len(compared) if compared else float("nan"),
        "nll_skill_vs_garch_t": ret["overall"]["skill"]["nll_vs_garch_t"],
        "crps_skill_vs_garch_t": ret["overall"]["skill"]["crps_vs_garch_t"],
        "nll_skill_vs_random_walk": ret["overall"]["skill"]["nll_vs_random_walk"],
        "crps_skill_vs_random_walk": ret["overall"]["skill"]["crps_vs_random_walk"],
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
        "direction": "up when P(y > 0) > 0.5 under the model; hit when up matches y > 0; Wilson 95% interval",
        "coverage": "share of days with y inside the central 80% / 50% interval (PIT within [0.1, 0.9] / [0.25, 0.75])",
        "persistence": "point forecast: previous candle's token; NLL of lambda * point mass + (1 - lambda) * "
                       "training unigram, lambda per channel fitted on the training period (persistence_weight)",
        "random_walk": "per asset N(mean, std) of its training-period close returns",
        "garch_t": "per asset GARCH(1,1) with standardized Student-t errors and constant mean on 100 x the "
                   "training-period returns (arch); parameters fixed, variance run forward over later days with "
                   "realised past returns only (no refit on val/test)",
    }
    log(f"scored baselines in {time.time() - t0:.1f}s (GARCH and random walk {time.time() - t1:.1f}s)")
    return results


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def results_name(split: str) -> str:
    return f"{check_split(split)}_results.json"


def evaluate_run(run_dir, split: str = "test", log=print, device=None, batch_size: int | None = None,
                 plots: bool = True) -> dict:
    """Score a run's best model on its test (or val) split; write `<split>_results.json`, the plots and the report
    (`report.md`; `val_report.md` for val) into the run directory, and return the results dict."""
    import numpy as np
    import torch

    from .checkpoint import write_json
    from .dataset import make_windows

    split = check_split(split)
    run_dir = check_run_dir(run_dir)
    started = time.time()
    cfg, tokenizer, store, model, epoch = load_run(run_dir, device)
    returns = np.asarray(store.returns)
    T = cfg.model.context_length
    windows = make_windows(store, split, T)
    bs = batch_size or cfg.training.batch_size
    log(f"Evaluating {run_dir} on {split}: {len(windows)} windows")
    scores = score_model(model, store, windows, T, close_density(tokenizer), returns, bs)
    log(f"scored the model in {time.time() - started:.1f}s")
    results = summarize(store, scores, returns, split, cfg.model.vocab_size, tokenizer.channels, log)
    meta = {"name": cfg.name, "run_dir": str(run_dir), "best_epoch": epoch,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "device": str(next(model.parameters()).device), "torch": torch.__version__,
            "weights": "best_model.pt (the epoch with the lowest val loss)",
            "close_bins": {"vocab_size": cfg.model.vocab_size,
                           "tail_scale": [float(s) for s in close_density(tokenizer).tail_scale]},
            "seconds": None}
    results = {**{k: results[k] for k in (f"{split}_loss", f"{split}_accuracy")}, **meta,
               **{k: v for k, v in results.items() if k not in (f"{split}_loss", f"{split}_accuracy")}}
    prefix = "" if split == "test" else "val_"
    if plots:
        results["plots"] = make_plots(results, run_dir, prefix)
    results["seconds"] = round(time.time() - started, 3)
    results = _clean(results)
    write_json(results, run_dir / results_name(split))
    report = write_report(results, run_dir, f"{prefix}report.md")
    results_path = run_dir / results_name(split)
    log(f"wrote {results_path} and {report}")
    return results


# ---------------------------------------------------------------------------------------------------
# formatting: every number shown comes from the results dict through these specs
# ---------------------------------------------------------------------------------------------------
def get_path(block: dict, path):
    for key in path:
        if block is None:
            return None
        block = block[key] if isinstance(block, dict) else block[int(key)]
    return block


def format_value(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt)


#: (header, path inside a close-return block, format) of the report's return tables
NLL_COLUMNS = [
    ("n", ("n",), "d"),
    ("model", ("model", "nll"), ".4f"),
    ("RW", ("random_walk", "nll"), ".4f"),
    ("GARCH-t", ("garch_t", "nll"), ".4f"),
    ("skill vs RW", ("skill", "nll_vs_random_walk"), "+.4f"),
    ("skill vs GARCH-t", ("skill", "nll_vs_garch_t"), "+.4f"),
    ("DM vs RW", ("dm", "vs_random_walk", "statistic"), "+.2f"),
    ("p (RW)", ("dm", "vs_random_walk", "p_value"), ".3g"),
    ("DM vs GARCH-t", ("dm", "vs_garch_t", "statistic"), "+.2f"),
    ("p (GARCH-t)", ("dm", "vs_garch_t", "p_value"), ".3g"),
]
CRPS_COLUMNS = [
    ("model", ("model", "crps"), ".6f"),
    ("RW", ("random_walk", "crps"), ".6f"),
    ("GARCH-t", ("garch_t", "crps"), ".6f"),
    ("skill vs RW", ("skill", "crps_vs_random_walk"), "+.4f"),
    ("skill vs GARCH-t", ("skill", "crps_vs_garch_t"), "+.4f"),
]
CALIBRATION_COLUMNS = [
    ("cov80 model", ("model", "coverage_80"), ".4f"),
    ("cov80 RW", ("random_walk", "coverage_80"), ".4f"),
    ("cov80 GARCH-t", ("garch_t", "coverage_80"), ".4f"),
    ("cov50 model", ("model", "coverage_50"), ".4f"),
    ("cov50 RW", ("random_walk", "coverage_50"), ".4f"),
    ("cov50 GARCH-t", ("garch_t", "coverage_50"), ".4f"),
    ("hit rate", ("direction", "hit_rate"), ".4f"),
    ("Wilson lo", ("direction", "wilson_95", 0), ".4f"),
    ("Wilson hi", ("direction", "wilson_95", 1), ".4f"),
    ("always up", ("direction", "always_up"), ".4f"),
]
CHANNEL_COLUMNS = [(f"{label} {kind}", (who, key), ".4f")
                   for who, label in (("model", "model"), ("unigram", "unigram"),
                                      ("unigram_per_asset", "unigram/asset"), ("persistence", "persistence"))
                   for kind, key in (("NLL", "nll"), ("acc", "accuracy"))]
RETURN_TABLES = {"nll": NLL_COLUMNS, "crps": CRPS_COLUMNS, "calibration": CALIBRATION_COLUMNS}


def group_rows(results: dict) -> list[tuple[str, dict]]:
    """(label, block) of the return tables: all, each category, each asset."""
    ret = results["returns"]
    rows = [("all", ret["overall"])]
    rows += [(f"{cat} (category)", block) for cat, block in ret["per_category"].items()]
    rows += [(symbol, block) for symbol, block in ret["per_asset"].items()]
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def return_table(results: dict, columns) -> str:
    return markdown_table(["group", *[c[0] for c in columns]],
                          [[label, *[format_value(get_path(block, p), f) for _, p, f in columns]]
                           for label, block in group_rows(results)])


def channel_table(results: dict) -> str:
    rows = [[name, *[format_value(get_path(entry, p), f) for _, p, f in CHANNEL_COLUMNS]]
            for name, entry in results["channels"].items()]
    return markdown_table(["channel", *[c[0] for c in CHANNEL_COLUMNS]], rows)


def _split_of(results: dict) -> str:
    return results.get("split", "test")


def headline(results: dict) -> str:
    """A few lines for the end of training / `make demo`."""
    s = _split_of(results)
    h, ov = results["headline"], results["returns"]["overall"]
    fv = format_value
    dm = ov["dm"]["vs_garch_t"]
    lines = [
        f"{results.get('name', 'run')} {s}: loss {fv(results[f'{s}_loss'], '.4f')} (unigram "
        f"{fv(results['unigram_loss'], '.4f')}), accuracy {fv(results[f'{s}_accuracy'], '.4f')}, "
        f"{results['targets']} targets",
        f"close return NLL skill vs GARCH-t {fv(h['nll_skill_vs_garch_t'], '+.4f')} nats/day "
        f"(DM {fv(dm['statistic'], '+.2f')}, p {fv(dm['p_value'], '.3g')}), vs RW {fv(h['nll_skill_vs_random_walk'], '+.4f')}; "
        f"CRPS skill vs GARCH-t {fv(h['crps_skill_vs_garch_t'], '+.4f')}, vs RW {fv(h['crps_skill_vs_random_walk'], '+.4f')}",
        f"model beats GARCH-t on NLL for {h['assets_beating_garch_t_nll']}/{h['assets_with_garch_t']} assets "
        f"(share {fv(h['share_beating_garch_t_nll'], '.4f')})",
        f"coverage 80% {fv(ov['model']['coverage_80'], '.4f')}, 50% {fv(ov['model']['coverage_50'], '.4f')}; "
        f"direction hit rate {fv(ov['direction']['hit_rate'], '.4f')} [{fv(ov['direction']['wilson_95'][0], '.4f')}, "
        f"{fv(ov['direction']['wilson_95'][1], '.4f')}] vs always up {fv(ov['direction']['always_up'], '.4f')}",
    ]
    if results.get("run_dir"):
        prefix = "" if s == "test" else "val_"
        lines.append(f"report: {Path(results['run_dir']) / f'{prefix}report.md'}")
    return "\n".join(lines)


def write_report(results: dict, run_dir, name: str = "report.md") -> Path:
    """report.md: the tables and plots, every number formatted from `results` (the dict written as JSON)."""
    s = _split_of(results)
    fv = format_value
    ov = results["returns"]["overall"]
    out = [f"# {results.get('name', 'run')}: {s} evaluation", ""]
    out.append(f"Run `{results.get('run_dir', run_dir)}`, best epoch {results.get('best_epoch')}, "
               f"{results.get('parameters', 0):,} parameters, {results['targets']} scored targets "
               f"(every {s} candle once, context reaching back). All numbers below are formatted from "
               f"`{results_name(s)}`." + (" The model was selected on val loss, so val numbers are optimistic."
                                          if s == "val" else ""))
    out += ["", "## Headline", "", "```", headline(results), "```", ""]
    out += ["## Per channel (token level, nats per token)", "",
            f"{s} loss {fv(results[f'{s}_loss'], '.4f')} (mean over channels, as in training), accuracy "
            f"{fv(results[f'{s}_accuracy'], '.4f')}; training-unigram loss {fv(results['unigram_loss'], '.4f')}.", "",
            channel_table(results), ""]
    titles = {"nll": "Close-to-close return: NLL (nats per day, log-return units)",
              "crps": "Close-to-close return: CRPS (log-return units)",
              "calibration": "Close-to-close return: interval coverage and direction"}
    for key, columns in RETURN_TABLES.items():
        out += [f"## {titles[key]}", "", return_table(results, columns), ""]
    missing = {a: b["garch_t_unusable"] for a, b in results["returns"]["per_asset"].items() if b.get("garch_t_unusable")}
    if missing:
        out += ["Assets without a GARCH-t baseline (left out of every GARCH-t comparison):", ""]
        out += [f"- {asset}: {reason}" for asset, reason in missing.items()] + [""]
    out += ["## PIT histogram (all assets, 10 bins; calibrated = 0.1 each)", ""]
    pit_rows = [[f"{k / PIT_BINS:.1f}-{(k + 1) / PIT_BINS:.1f}",
                 *[fv(get_path(ov, (who, "pit_histogram", k)), ".4f") for who in ("model", *BASELINES)]]
                for k in range(PIT_BINS)]
    out += [markdown_table(["PIT bin", "model", "RW", "GARCH-t"], pit_rows), ""]
    plots = results.get("plots") or {}
    if plots:
        out += ["## Plots", ""]
        for title, key in (("Training curves", "training_curves"), ("Calibration", "calibration"),
                           ("Per-asset NLL skill against GARCH-t", "skill_vs_garch_t")):
            if plots.get(key):
                out += [f"### {title}", "", f"![{title}]({plots[key]})", ""]
    d = results.get("definitions", {})
    out += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in d.items()] + [""]
    path = Path(run_dir) / name
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------
def make_plots(results: dict, run_dir, prefix: str = "") -> dict:
    """PNG files in the run directory: training curves (from training_log.json), PIT histogram + coverage, per-asset
    NLL skill against GARCH-t. Returns {plot: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    run_dir = Path(run_dir)
    out = {}
    log_path = run_dir / "training_log.json"
    epochs = read_json(log_path, "training log").get("epochs", []) if log_path.exists() else []
    if epochs:
        e = [x["epoch"] for x in epochs]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        a1.plot(e, [x["train_loss"] for x in epochs], "o-", label="train")
        a1.plot(e, [x["val_loss"] for x in epochs], "o-", label="val")
        if results.get("unigram_loss") is not None:
            a1.axhline(results["unigram_loss"], color="grey", ls="--", label=f"unigram ({_split_of(results)})")
        a1.set(xlabel="epoch", ylabel="loss (nats per token)", title="loss")
        a1.legend()
        a2.plot(e, [100 * x["train_accuracy"] for x in epochs], "o-", label="train")
        a2.plot(e, [100 * x["val_accuracy"] for x in epochs], "o-", label="val")
        a2.set(xlabel="epoch", ylabel="accuracy (%, mean over channels)", title="accuracy")
        a2.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "training_curves.png", dpi=100)
        plt.close(fig)
        out["training_curves"] = "training_curves.png"
    ov = results["returns"]["overall"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    centers = (np.arange(PIT_BINS) + 0.5) / PIT_BINS
    width = 1 / PIT_BINS / 3.2
    for k, (who, label) in enumerate((("model", "model"), ("random_walk", "RW"), ("garch_t", "GARCH-t"))):
        hist = ov[who].get("pit_histogram")
        if hist:
            a1.bar(centers + (k - 1) * width, [h if h is not None else 0 for h in hist], width, label=label)
    a1.axhline(1 / PIT_BINS, color="black", ls="--", lw=1)
    a1.set(xlabel="PIT", ylabel="share of days", title="PIT histogram")
    a1.legend()
    levels = [round(100 * lv) for lv in COVERAGE_LEVELS]
    x = np.arange(len(levels))
    a2.bar(x - 0.3, [lv / 100 for lv in levels], 0.2, color="grey", label="nominal")
    for k, (who, label) in enumerate((("model", "model"), ("random_walk", "RW"), ("garch_t", "GARCH-t"))):
        vals = [ov[who].get(f"coverage_{lv}") for lv in levels]
        a2.bar(x - 0.1 + 0.2 * k, [v if v is not None else 0 for v in vals], 0.2, label=label)
    a2.set_xticks(x, [f"{lv}% interval" for lv in levels])
    a2.set(ylabel="coverage", title="central interval coverage", ylim=(0, 1))
    a2.legend()
    fig.tight_layout()
    fig.savefig(run_dir / f"{prefix}calibration.png", dpi=100)
    plt.close(fig)
    out["calibration"] = f"{prefix}calibration.png"
    assets = [(s, b["skill"]["nll_vs_garch_t"]) for s, b in results["returns"]["per_asset"].items()
              if b["skill"]["nll_vs_garch_t"] is not None]
    assets.sort(key=lambda t: t[1])
    fig, ax = plt.subplots(figsize=(max(6, min(24, 0.3 * len(assets) + 2)), 4))
    if assets:
        vals = [v for _, v in assets]
        ax.bar(range(len(assets)), vals, color=["tab:green" if v > 0 else "tab:red" for v in vals])
        if len(assets) <= 60:
            ax.set_xticks(range(len(assets)), [s for s, _ in assets], rotation=90)
    else:
        ax.text(0.5, 0.5, "no asset with a GARCH-t fit", ha="center", transform=ax.transAxes)
    ax.axhline(0, color="black", lw=1)
    ax.set(ylabel="NLL skill (nats/day, > 0: model better)", title="per-asset NLL skill against GARCH(1,1)-t")
    fig.tight_layout()
    fig.savefig(run_dir / f"{prefix}skill_vs_garch_t.png", dpi=100)
    plt.close(fig)
    out["skill_vs_garch_t"] = f"{prefix}skill_vs_garch_t.png"
    return out


# ---------------------------------------------------------------------------------------------------
# comparing runs
# ---------------------------------------------------------------------------------------------------
COMPARE_COLUMNS = [
    ("name", ("name",), "s"), ("params", ("parameters",), ","), ("vocab", ("close_bins", "vocab_size"), "d"),
    ("loss", ("{split}_loss",), ".4f"), ("accuracy", ("{split}_accuracy",), ".4f"),
    ("unigram loss", ("unigram_loss",), ".4f"),
    ("NLL skill vs RW", ("headline", "nll_skill_vs_random_walk"), "+.4f"),
    ("NLL skill vs GARCH-t", ("headline", "nll_skill_vs_garch_t"), "+.4f"),
    ("CRPS skill vs RW", ("headline", "crps_skill_vs_random_walk"), "+.4f"),
    ("CRPS skill vs GARCH-t", ("headline", "crps_skill_vs_garch_t"), "+.4f"),
    ("cov80", ("returns", "overall", "model", "coverage_80"), ".4f"),
    ("cov50", ("returns", "overall", "model", "coverage_50"), ".4f"),
    ("share beating GARCH-t", ("headline", "share_beating_garch_t_nll"), ".4f"),
]


def compare_runs(run_dirs, split: str = "test", evaluate_missing: bool = True, log=print):
    """One row per run (pandas DataFrame): name, run directory, parameters, loss/accuracy, unigram loss, NLL and CRPS
    skill against each baseline, coverage, share of assets beating GARCH-t. Runs without `<split>_results.json` are
    evaluated first (or raise with evaluate_missing=False)."""
    import pandas as pd

    split = check_split(split)
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        path = run_dir / results_name(split)
        if path.exists():
            results = read_json(path, "results file")
        elif not run_dir.is_dir():
            raise MarketGPTError(f"{run_dir}: run directory not found")
        elif evaluate_missing:
            results = evaluate_run(run_dir, split, log=log)
        else:
            raise MarketGPTError(f"{run_dir}: no {path.name}; run `marketgpt evaluate {run_dir}` first")
        row = {"run": run_dir.name}
        for header, p, _ in COMPARE_COLUMNS:
            row[header] = get_path(results, [k.format(split=split) for k in p])
        rows.append(row)
    columns = ["name", "run", *[c[0] for c in COMPARE_COLUMNS[1:]]]
    return pd.DataFrame(rows, columns=columns)


def format_compare(table) -> str:
    """The compare table as markdown."""
    fmt = {h: f for h, _, f in COMPARE_COLUMNS}
    rows = []
    for record in table.to_dict("records"):
        cells = []
        for h in table.columns:
            v = record[h]
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            cells.append(str(v) if h in ("name", "run") else format_value(v, fmt[h]))
        rows.append(cells)
    return markdown_table(list(table.columns), rows)


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def cmd_evaluate(args) -> int:
    results = evaluate_run(args.run_dir, args.split)
    print(headline(results))
    return 0


def cmd_compare(args) -> int:
    print(format_compare(compare_runs(args.run_dirs, args.split)))
    return 0


def add_commands(sub) -> None:
    """Register this module's subcommands on the `marketgpt` parser."""
    ev = sub.add_parser("evaluate", help="score a run's best model on test (or val) against unigram, persistence, "
                                         "random walk and GARCH(1,1)-t; write results JSON, plots and report.md")
    ev.add_argument("run_dir", metavar="RUN_DIR")
    ev.add_argument("--split", default="test", help="test (default) or val")
    ev.set_defaults(func=cmd_evaluate)
    cmp = sub.add_parser("compare", help="one table of several runs' results (evaluating runs that have none)")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--split", default="test", help="test (default) or val")
    cmp.set_defaults(func=cmd_compare)
