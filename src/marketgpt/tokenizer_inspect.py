"""`marketgpt tokenizer inspect`: per channel the bin ranges and usage, per asset the bins it uses and how well the
close return survives encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .tokenizer import CandleTokenizer


def inspect_tokenizer(tokenizer: CandleTokenizer, frame: pd.DataFrame | None = None) -> dict:
    """Bin report: per channel edge/value ranges and bin usage; per asset (with `frame`) bin usage
    and the close-return reconstruction RMSE relative to the asset's close-return std; the worst asset.

    Without `frame`, bin usage is the share of bins that hold training candles. Plain JSON-able dict.
    """
    tokenizer._check_fitted()
    V = tokenizer.vocab_size
    report: dict[str, Any] = {"vocab_size": V, "channels": {}, "assets": None, "worst_asset": None}
    tokens = feats = rows = None
    if frame is not None:
        feats_cm, rows, _ = tokenizer._features_cm(frame)   # scaled: reconstruction in sigma units
        tokens = np.ascontiguousarray(tokenizer._encode_cm(feats_cm).T)
        feats = feats_cm.T
    for k, name in enumerate(tokenizer.channels):
        e, v = tokenizer._edges[name], tokenizer._values[name]
        if tokens is None:
            used = float(np.count_nonzero(tokenizer._counts[name]) / V)
        else:
            used = float(np.unique(tokens[:, k]).size / V)
        report["channels"][name] = {
            "edge_min": float(e[0]), "edge_max": float(e[-1]),
            "value_min": float(v[0]), "value_max": float(v[-1]),
            "bins_used": used, "usage_source": "training" if tokens is None else "frame",
        }
    if frame is not None and "symbol" in frame.columns and rows is not None and rows.size:
        codes, names = pd.factorize(frame["symbol"].to_numpy()[rows], sort=False)
        na = len(names)
        n_a = np.bincount(codes, minlength=na)
        true = feats[:, 0]
        err = tokenizer._values["close"][tokens[:, 0]] - true
        rmse = np.sqrt(np.bincount(codes, err * err, minlength=na) / n_a)
        mean = np.bincount(codes, true, minlength=na) / n_a
        std = np.sqrt(np.bincount(codes, (true - mean[codes]) ** 2, minlength=na) / n_a)
        usage = {}
        for k, ch in enumerate(tokenizer.channels):  # distinct (asset, token) pairs per asset
            pairs = np.unique(codes.astype(np.int64) * V + tokens[:, k])
            usage[ch] = np.bincount(pairs // V, minlength=na) / V
        assets = {}
        for a, name in enumerate(names):
            r, s = float(rmse[a]), float(std[a])
            ratio = r / s if s > 0 else (0.0 if r == 0 else None)
            assets[str(name)] = {"candles": int(n_a[a]), "close_rmse": r, "close_std": s, "rmse_over_std": ratio,
                                 "bins_used": {ch: float(usage[ch][a]) for ch in tokenizer.channels}}
        report["assets"] = assets
        rated = [(r["rmse_over_std"], s) for s, r in assets.items() if r["rmse_over_std"] is not None]
        if rated:
            worst = max(rated)[1]
            report["worst_asset"] = {"symbol": worst,
                                     **{k: assets[worst][k] for k in ("rmse_over_std", "close_rmse", "close_std")}}
    return report


def format_inspection(report: dict, max_assets: int | None = 20) -> str:
    """Readable text tables of an `inspect_tokenizer` report (assets sorted worst first)."""
    lines = [f"vocab_size {report['vocab_size']}",
             f"{'channel':<8} {'edge min':>12} {'edge max':>12} {'value min':>12} {'value max':>12} {'bins used':>10}"]
    for name, c in report["channels"].items():
        lines.append(f"{name:<8} {c['edge_min']:>12.6g} {c['edge_max']:>12.6g} {c['value_min']:>12.6g} "
                     f"{c['value_max']:>12.6g} {c['bins_used']:>9.1%}")
    assets = report.get("assets")
    if assets:
        chans = list(report["channels"])
        items = sorted(assets.items(), key=lambda kv: -(kv[1]["rmse_over_std"] or 0.0))
        shown = items if max_assets is None else items[:max_assets]
        lines.append("")
        lines.append(f"assets: {len(items)}" + ("" if len(shown) == len(items) else f" (worst {len(shown)} shown)"))
        lines.append(f"{'symbol':<12} {'candles':>8} {'close rmse':>11} {'close std':>10} {'rmse/std':>9} "
                     + " ".join(f"{c[:6]:>7}" for c in chans))
        for s, r in shown:
            ratio = "n/a" if r["rmse_over_std"] is None else f"{r['rmse_over_std']:.2%}"
            lines.append(f"{s:<12} {r['candles']:>8} {r['close_rmse']:>11.3g} {r['close_std']:>10.3g} {ratio:>9} "
                         + " ".join(f"{r['bins_used'][c]:>7.1%}" for c in chans))
    w = report.get("worst_asset")
    if w:
        lines.append("")
        lines.append(f"worst asset: {w['symbol']} close rmse/std {w['rmse_over_std']:.2%}")
    return "\n".join(lines)
