"""Token store and training windows: candles -> tokens per asset -> fixed-length windows per split.

A window is `context_length + 1` consecutive token rows of one asset: inputs are the first
`context_length`, targets the last. Windows of a split tile its target rows from the end, so every
target row is scored exactly once per pass, and the first window of a split may reach back into
earlier periods for context (its earlier targets are masked out of the loss).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import read_json
from .data import SPLITS, TimeSplit
from .errors import MarketGPTError
from .tokenizer import CandleTokenizer


@dataclass
class TokenStore:
    """All assets' tokens back to back (rows, channels), with per-row asset index, split label and date."""

    tokens: np.ndarray      # (N, C) uint16
    asset: np.ndarray       # (N,) int32 index into `symbols`
    split: np.ndarray       # (N,) int8, 0 train 1 val 2 test (3 embargo): the split of the row's candle
    dates: np.ndarray       # (N,) datetime64[D]
    returns: np.ndarray     # (N,) float64: the true close-to-close log return ln(C/Cp) the row encodes
    symbols: list[str]
    categories: list[str]   # category of each asset
    category_names: list[str]
    sigma: np.ndarray | None = None   # (N,) float64: the scale of each row (tokenizer_scale.py); None without one

    @property
    def category_ids(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.category_names)}
        return np.array([index[c] for c in self.categories], dtype=np.int64)

    def asset_rows(self) -> dict[str, tuple[int, int]]:
        """Row range [begin, end) of each asset."""
        bounds = np.flatnonzero(np.diff(self.asset, prepend=-1, append=-1))
        return {self.symbols[self.asset[b]]: (int(b), int(e)) for b, e in zip(bounds[:-1], bounds[1:])}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("tokens", "asset", "split", "returns"):
            np.save(folder / f"{name}.npy", getattr(self, name))
        if self.sigma is not None:
            np.save(folder / "sigma.npy", self.sigma)
        np.save(folder / "dates.npy", self.dates.astype("datetime64[D]").astype(np.int64))
        (folder / "assets.json").write_text(json.dumps(
            {"symbols": self.symbols, "categories": self.categories, "category_names": self.category_names}))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "TokenStore":
        mode = "r" if mmap else None
        meta = read_json(folder / "assets.json", "token store index")
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode=mode, allow_pickle=False)
                  for n in ("tokens", "asset", "split", "returns")}
        dates = np.load(folder / "dates.npy", allow_pickle=False).astype("datetime64[D]")
        if (folder / "sigma.npy").exists():    # a store without it: a tokenizer without a scale
            arrays["sigma"] = np.load(folder / "sigma.npy", mmap_mode=mode, allow_pickle=False)
        return cls(dates=dates, **arrays, **meta)


def build_store(candles: pd.DataFrame, universe: pd.DataFrame, tokenizer: CandleTokenizer, split: TimeSplit) -> TokenStore:
    """Encode every asset of the long frame; the first candle of each asset is its reference and has no row."""
    present = set(candles.symbol)
    symbols = [s for s in universe.symbol if s in present]
    category_of = dict(zip(universe.symbol, universe.category))
    order = {s: i for i, s in enumerate(symbols)}
    frame = candles.assign(_asset=candles.symbol.map(order)).sort_values(["_asset", "date"], kind="stable")
    tokens, rows = tokenizer.encode_frame(frame)
    dates = frame.date.to_numpy()[rows].astype("datetime64[D]")
    close = frame.close.to_numpy()
    returns = np.log(close[rows] / close[rows - 1])       # rows never hold an asset's first candle
    return TokenStore(tokens.astype(np.uint16), frame._asset.to_numpy()[rows].astype(np.int32),
                      split.assign(dates).astype(np.int8), dates, returns, symbols,
                      [category_of[s] for s in symbols], sorted({category_of[s] for s in symbols}),
                      tokenizer.sigma(frame))


def make_windows(store: TokenStore, split_name: str, context_length: int) -> np.ndarray:
    """Windows of one split as rows (start, target_lo, target_hi, asset): inputs are rows start..start+T-1,
    targets rows start+1..start+T, and only targets in [target_lo, target_hi) count."""
    k = SPLITS.index(split_name)
    T = context_length
    out = []
    for begin, end in store.asset_rows().values():
        if end - begin < T + 1:
            continue
        rows = np.flatnonzero(store.split[begin:end] == k) + begin
        rows = rows[rows > begin]          # the asset's first row has no input before it
        if not len(rows):
            continue
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        ends = np.arange(hi, lo, -T)[::-1]                   # exclusive ends of target chunks
        starts = np.maximum(ends - T - 1, begin)
        chunk_lo = np.maximum(ends - T, lo)
        out.append(np.stack([starts, chunk_lo, ends, np.full_like(ends, store.asset[begin])], axis=1))
    if not out:
        raise MarketGPTError(f"no {split_name} windows: every asset has fewer than context_length+1 = {T + 1} candles "
                             f"or no candles in the {split_name} period")
    return np.concatenate(out).astype(np.int64)


def gather_sequences(store: TokenStore, windows: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token rows (B,T+1,C) int64, loss mask (B,T), asset ids (B,)) for a batch of windows: inputs are
    sequences[:, :-1], targets sequences[:, 1:]."""
    offsets = np.arange(context_length + 1)
    rows = windows[:, :1] + offsets
    seq = np.asarray(store.tokens[rows.ravel()]).reshape(len(windows), context_length + 1, -1).astype(np.int64)
    target_rows = rows[:, 1:]
    mask = (target_rows >= windows[:, 1:2]) & (target_rows < windows[:, 2:3])
    return seq, mask, windows[:, 3]


def weekday(dates) -> np.ndarray:
    """The weekday (Monday 0 .. Sunday 6, int64) of each date: the model's calendar input (model.calendar)."""
    return (np.asarray(dates, dtype="datetime64[D]").astype(np.int64) + 3) % 7     # 1970-01-01 was a Thursday


def gather_inputs(store: TokenStore, windows: np.ndarray, context_length: int) -> dict[str, np.ndarray]:
    """The model's inputs beside the tokens, each (B, T) for a batch of windows: `weekday`, the weekday of each
    input candle (rows start..start+T-1: its own date, nothing after it), and for a store with a scale `scale`
    (float32), at input position t the scale of the candle it predicts (rows start+1..start+T), known from the
    returns up to t. A model without a calendar leaves the weekday unused."""
    rows = windows[:, :1] + np.arange(context_length)
    out = {"weekday": weekday(store.dates[rows.ravel()]).reshape(rows.shape)}
    if store.sigma is not None:
        from .tokenizer_scale import model_input

        out["scale"] = model_input(np.asarray(store.sigma[rows.ravel() + 1])).reshape(rows.shape).astype(np.float32)
    return out


def gather(store: TokenStore, windows: np.ndarray, context_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (B,T,C), targets (B,T,C), loss mask (B,T), asset ids (B,)) for a batch of windows."""
    seq, mask, asset = gather_sequences(store, windows, context_length)
    return seq[:, :-1], seq[:, 1:], mask, asset


@dataclass
class Prepared:
    universe: pd.DataFrame
    split: TimeSplit
    tokenizer: CandleTokenizer
    store: TokenStore
    no_volume: list[str] = field(default_factory=list)   # with use_volume: assets whose candles have no volume


def load_data_candles(data_cfg) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The universe and the cached candles of a config's `data` section, cut to its start and end."""
    from .data import load_candles, load_universe

    universe = load_universe(data_cfg.universe)
    candles = load_candles(universe, data_cfg.provider, data_cfg.data_dir or None, policy=data_cfg.on_bad_rows)
    if data_cfg.start:
        candles = candles[candles.date >= pd.Timestamp(data_cfg.start)]
    if data_cfg.end:
        candles = candles[candles.date <= pd.Timestamp(data_cfg.end)]
    return universe, candles


def load_split_candles(data_cfg) -> tuple[pd.DataFrame, pd.DataFrame, TimeSplit]:
    """The universe, its cached candles and the time split of a config's `data` section: at its explicit cutoff
    dates when it has them (a walk-forward fold), else at the global ratios."""
    from .data import time_split
    from .data.split import dated_split

    universe, candles = load_data_candles(data_cfg)
    if data_cfg.train_end:
        return universe, candles, dated_split(candles, data_cfg.train_end, data_cfg.val_end, data_cfg.embargo_days)
    return universe, candles, time_split(candles, data_cfg.train_ratio, data_cfg.val_ratio, data_cfg.embargo_days)


def fit_tokenizer(candles: pd.DataFrame, split: TimeSplit, vocab_size: int, use_volume: bool,
                  scale_lambda: float = 0.0) -> CandleTokenizer:
    """Fit on the training period only, so that nothing of the val and test candles reaches the bins (nor the
    scale's prior)."""
    return CandleTokenizer(vocab_size, use_volume, scale_lambda=scale_lambda).fit(candles[split.assign(candles.date) == 0])


def prepare_dataset(cfg, tokenizer: CandleTokenizer | None = None) -> Prepared:
    """Load candles, split them in time, fit the tokenizer on the training period only, and encode everything."""
    universe, candles, split = load_split_candles(cfg.data)
    if tokenizer is None:
        tokenizer = fit_tokenizer(candles, split, cfg.model.vocab_size, cfg.model.use_volume, cfg.model.scale_lambda)
    elif tokenizer.vocab_size != cfg.model.vocab_size:
        raise MarketGPTError(f"tokenizer vocab_size {tokenizer.vocab_size} != model.vocab_size {cfg.model.vocab_size}")
    elif tokenizer.scale_lambda != cfg.model.scale_lambda:
        raise MarketGPTError(f"tokenizer scale_lambda {tokenizer.scale_lambda} != model.scale_lambda "
                             f"{cfg.model.scale_lambda}")
    volume = candles.volume.fillna(0).ne(0).groupby(candles.symbol, sort=False).any()
    no_volume = [str(s) for s, has in volume.items() if not has] if tokenizer.use_volume else []
    return Prepared(universe, split, tokenizer, build_store(candles, universe, tokenizer, split), no_volume)
