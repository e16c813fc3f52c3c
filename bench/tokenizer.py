"""Tokenizer throughput on a Case-A-sized long frame, against the original's k-means.

Data: 600 assets x 6,000 days = 3.6M candles, made by tiling the real daily series of ../shared/data
(asset i replays series i mod 276 from its own offset, cyclically: real close/open returns, wicks and
volumes, re-chained into a continuous price path). Without ../shared/data, a simulated random walk
with realistic OHLC (fat-tailed returns, gaps, wicks) of the same size is used instead, and said so.

Timed: `CandleTokenizer(1024).fit(frame)` on all 3.6M candles (the worst case: the real fit sees the
training 70%) and `encode_frame(frame)` of all assets, best of 3 runs each. Reference: scikit-learn
`KMeans(n_clusters=1024, n_init=10)` on random subsamples of one channel (the close return; 12.5k,
25k and 50k candles), measured, then extrapolated linearly in candles (k-means++ init and each
Lloyd iteration cost O(candles x clusters); assumes the iteration count does not grow) to 3.6M
candles x 4 channels; the ratio printed is that extrapolation over our measured fit + encode. The
scaling exponent measured between the three sizes is printed next to it.

Same-subsample ratio, both measured: the first `--same-sample-assets` assets (2 x 6,000 = 12,000 candles):
our fit + encode_frame on them (best of 3) against k-means (1024 clusters, n_init=10) fitted and applied
(`predict`) on each of the 4 channels of the same candles, as the original did per channel.

Writes bench/results/tokenizer.json. Run: `python bench/tokenizer.py [--kmeans-sample 50000]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from marketgpt.tokenizer import CandleTokenizer

ASSETS, DAYS = 600, 6000
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_series() -> list[np.ndarray] | None:
    """Per daily file of ../shared/data: (n-1, 5) array of close/open/upper/lower log features and volume."""
    files = sorted(f for f in SHARED_DATA.glob("*/*.csv.gz") if f.parent.name != "intraday")
    if not files:
        return None
    out = []
    for f in files:
        d = pd.read_csv(f)
        o, h, lo, c, v = (d[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
        if c.size < 2:
            continue
        cp = c[:-1]
        o, h, lo, c, v = o[1:], h[1:], lo[1:], c[1:], v[1:]
        out.append(np.stack([np.log(c / cp), np.log(o / cp), np.log(h / np.maximum(o, c)),
                             np.log(np.minimum(o, c) / lo), v], axis=1))
    return out


def _simulated() -> np.ndarray:
    rng = np.random.default_rng(0)
    n = ASSETS * DAYS
    vol = np.repeat(rng.lognormal(np.log(0.015), 0.6, ASSETS), DAYS)
    close = vol * rng.standard_t(4, n) / np.sqrt(2)
    open_ = 0.2 * vol * rng.standard_t(4, n) / np.sqrt(2)
    upper = np.abs(rng.normal(0, 0.6, n)) * vol * (rng.random(n) > 0.05)
    lower = np.abs(rng.normal(0, 0.6, n)) * vol * (rng.random(n) > 0.05)
    volume = np.round(rng.lognormal(13, 0.5, n))
    return np.stack([close, open_, upper, lower, volume], axis=1).reshape(ASSETS, DAYS, 5)


def build_frame() -> tuple[pd.DataFrame, str]:
    series = _real_series()
    if series:
        lengths = np.array([s.shape[0] for s in series])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        pool = np.concatenate(series)
        base = np.arange(ASSETS) % len(series)
        offset = (np.arange(ASSETS) * 7919) % lengths[base]
        idx = starts[base, None] + (offset[:, None] + np.arange(DAYS)[None, :]) % lengths[base, None]
        f = pool[idx]  # (ASSETS, DAYS, 5)
        source = f"tiled real series of {SHARED_DATA} ({len(series)} daily files, per-asset offsets)"
    else:
        f = _simulated()
        source = "simulated random walk (../shared/data absent)"
    close = 100.0 * np.exp(np.cumsum(f[:, :, 0], axis=1))
    cp = np.concatenate([np.full((ASSETS, 1), 100.0), close[:, :-1]], axis=1)
    open_ = cp * np.exp(f[:, :, 1])
    high = np.maximum(open_, close) * np.exp(f[:, :, 2])
    low = np.minimum(open_, close) / np.exp(f[:, :, 3])
    dates = pd.bdate_range("1998-01-02", periods=DAYS).to_numpy()
    frame = pd.DataFrame({
        "symbol": np.repeat(np.array([f"A{i:03d}" for i in range(ASSETS)], dtype=object), DAYS),
        "date": np.tile(dates, ASSETS),
        "open": open_.ravel(), "high": high.ravel(), "low": low.ravel(), "close": close.ravel(),
        "volume": f[:, :, 4].ravel(),
    })
    return frame, source


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def same_subsample(frame: pd.DataFrame, vocab: int, assets: int) -> tuple[float, float, int]:
    """Ours (fit + encode_frame, best of 3) and k-means per channel (fit + predict), timed on the same candles."""
    from sklearn.cluster import KMeans

    part = frame[frame["symbol"].isin(frame["symbol"].unique()[:assets])]
    tok = CandleTokenizer(vocab)
    ours_s, _ = best_of(lambda: tok.fit(part).encode_frame(part))
    feats = np.concatenate([tok.features(rows) for _, rows in part.groupby("symbol")])
    t = time.perf_counter()
    for k in range(feats.shape[1]):
        column = feats[:, k:k + 1]
        KMeans(n_clusters=vocab, n_init=10, random_state=0).fit(column).predict(column)
    return ours_s, time.perf_counter() - t, len(part)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kmeans-sample", type=int, default=50_000, help="candles of one channel for the k-means run")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--same-sample-assets", type=int, default=2,
                    help="assets (6,000 candles each) of the subsample both are measured on")
    args = ap.parse_args()

    t = time.perf_counter()
    frame, source = build_frame()
    print(f"frame: {len(frame):,} candles, {frame['symbol'].nunique()} assets ({source}); built in "
          f"{time.perf_counter() - t:.1f} s", flush=True)

    tok = CandleTokenizer(args.vocab)
    fit_s, _ = best_of(lambda: tok.fit(frame))
    enc_s, (tokens, rows) = best_of(lambda: tok.encode_frame(frame))
    tok_v = CandleTokenizer(args.vocab, use_volume=True)
    fit_v_s, _ = best_of(lambda: tok_v.fit(frame))
    enc_v_s, _ = best_of(lambda: tok_v.encode_frame(frame))
    ours = fit_s + enc_s
    print(f"ours: fit {fit_s:.2f} s + encode_frame {enc_s:.2f} s = {ours:.2f} s "
          f"({len(frame) / ours / 1e6:.2f} M candles/s); with volume {fit_v_s + enc_v_s:.2f} s", flush=True)

    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    c = frame["close"].to_numpy()
    close_feat = np.log(c[rows] / c[rows - 1])  # the close channel of every tokenized candle
    sample = rng.choice(close_feat, size=min(args.kmeans_sample, close_feat.size), replace=False)[:, None]
    sizes = [sample.shape[0] // 4, sample.shape[0] // 2, sample.shape[0]]
    km_times, km_iters = [], []
    for size in sizes:  # three sizes, to check the linear scaling the extrapolation assumes
        t = time.perf_counter()
        km = KMeans(n_clusters=args.vocab, n_init=10, random_state=0).fit(sample[:size])
        km_times.append(time.perf_counter() - t)
        km_iters.append(int(km.n_iter_))
        print(f"k-means (sklearn, {args.vocab} clusters, n_init=10) on {size:,} close returns: "
              f"{km_times[-1]:.1f} s measured ({km_iters[-1]} Lloyd iterations in the best run)", flush=True)
    same_s, same_km_s, same_n = same_subsample(frame, args.vocab, args.same_sample_assets)
    same_ratio = same_km_s / same_s
    print(f"same {same_n:,} candles: ours fit + encode {same_s * 1e3:.1f} ms, k-means on 4 channels {same_km_s:.1f} s "
          f"-> {same_ratio:,.0f}x", flush=True)
    km_s = km_times[-1]
    exponent = float(np.log(km_times[-1] / km_times[0]) / np.log(sizes[-1] / sizes[0]))
    km_full_channel = km_s * (len(tokens) / sizes[-1])
    km_full = km_full_channel * 4
    km_full_power = km_s * (len(tokens) / sizes[-1]) ** exponent * 4
    ratio = km_full / ours
    print(f"measured scaling: time ~ candles^{exponent:.2f} between {sizes[0]:,} and {sizes[-1]:,}", flush=True)

    rows_out = [
        ("fit, 3.6M candles (4 channels)", f"{fit_s:.2f} s", "measured"),
        ("encode_frame, all assets", f"{enc_s:.2f} s", "measured"),
        ("ours total (fit + encode)", f"{ours:.2f} s", "measured"),
        ("ours total with volume channel", f"{fit_v_s + enc_v_s:.2f} s", "measured"),
        *[(f"k-means, {n:,} candles x 1 channel", f"{t:.1f} s", "measured") for n, t in zip(sizes, km_times)],
        ("k-means, 3.6M candles x 1 channel", f"{km_full_channel:,.0f} s", "extrapolated (linear in candles)"),
        ("k-means, 3.6M candles x 4 channels", f"{km_full:,.0f} s", "extrapolated"),
        (f"  same with the measured exponent {exponent:.2f}", f"{km_full_power:,.0f} s", "extrapolated"),
        ("k-means / ours", f"{ratio:,.0f}x", "extrapolated (linear) / measured"),
        (f"ours, the same {same_n:,} candles", f"{same_s:.3f} s", "measured"),
        (f"k-means, the same {same_n:,} candles x 4 channels", f"{same_km_s:.1f} s", "measured"),
        ("k-means / ours on the same candles", f"{same_ratio:,.0f}x", "measured / measured"),
    ]
    w = max(len(r[0]) for r in rows_out)
    print()
    print(f"{'step':<{w}}  {'time':>10}  how")
    for r in rows_out:
        print(f"{r[0]:<{w}}  {r[1]:>10}  {r[2]}")

    result = {
        "benchmark": "tokenizer",
        "data": source, "candles": int(len(frame)), "assets": ASSETS, "days": DAYS, "vocab_size": args.vocab,
        "ours": {"fit_s": fit_s, "encode_frame_s": enc_s, "total_s": ours,
                 "with_volume_total_s": fit_v_s + enc_v_s, "timing": "best of 3"},
        "kmeans": {"impl": "sklearn.cluster.KMeans(n_clusters=vocab, n_init=10, random_state=0)",
                   "channel": "close", "sample_candles": sizes, "measured_s": km_times,
                   "n_iter_best_run": km_iters, "measured_scaling_exponent": exponent,
                   "extrapolated_four_channels_measured_exponent_s": km_full_power,
                   "extrapolated_one_channel_s": km_full_channel, "extrapolated_four_channels_s": km_full,
                   "extrapolation": "linear in candles (per-iteration cost O(candles x clusters); "
                                    "assumes the same iteration count on the full data)"},
        "ratio_kmeans_over_ours": ratio,
        "same_subsample": {"candles": same_n, "assets": args.same_sample_assets, "ours_s": same_s,
                           "kmeans_four_channels_s": same_km_s, "ratio": same_ratio,
                           "kmeans": "fit + predict per channel (close, open, upper, lower), n_init=10"},
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count(), "numpy": np.__version__, "pandas": pd.__version__,
                    "loadavg_1min_at_end": os.getloadavg()[0]},
    }
    out = Path(__file__).resolve().parent / "results" / "tokenizer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
