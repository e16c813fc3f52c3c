"""Candle tokenizer: per-channel bins over log-return features of daily OHLC(V) candles.

See `CandleTokenizer` for the features, the bin placement and the guarantees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import MarketGPTError
from . import tokenizer_scale as scale
from .tokenizer_bins import NONNEGATIVE, Bucketizer, fit_channel, map_channels, placement
from .tokenizer_features import as_float, asset_starts, check_date_order, volume_feature

__all__ = ["CandleTokenizer"]

FORMAT = "marketgpt-tokenizer"
PRICE_CHANNELS = ("close", "open", "upper", "lower")
_PRICE_COLUMNS = ("open", "high", "low", "close")

class CandleTokenizer:
    """Turns daily candles into one token per channel, and tokens back into valid candles.

    Features, per candle, from the previous close Cp of the same asset (channels in this order):

    - ``close = ln(C / Cp)``, ``open = ln(O / Cp)``,
    - ``upper = ln(H / max(O, C)) >= 0``, ``lower = ln(min(O, C) / L) >= 0``,
    - with ``use_volume``: ``volume = ln(V / m)``, m the mean volume of the up to ``volume_window``
      previous candles of the same asset (the past only; fewer at the start of an asset). It is 0
      where m is 0 (all-zero volumes, e.g. FX) and clipped to +-10 (a zero volume against a positive
      mean gives -10).

    **First candle of an asset.** It has no Cp, so it only serves as the reference: ``features`` and
    ``encode`` return n - 1 rows for n candles, row k belonging to frame row k + 1. ``encode_frame``
    does the same per asset of a long frame and returns the frame rows the tokens belong to.

    **Bins.** Each channel has ``vocab_size`` bins: ``vocab_size - 1`` strictly increasing inner
    edges, token = number of edges <= value (``np.searchsorted(edges, x, "right")``), so the two
    outer bins are open-ended and every finite value has a token. Decode value of a bin: the median
    of the training values inside it; for an empty bin the midpoint of its edges (an empty outer bin
    gets half the width of its neighbour beyond its edge), always finite, kept strictly inside the
    bin (margin 1e-11) and >= 0 for ``upper``/``lower`` (whose bin 0 is ``[0, first edge)``). So any
    token tuple decodes to a valid candle, and encoding it gives the same tokens back.

    **Edge placement.** Edges are the quantiles at levels k/vocab_size of a 50/50 mixture of two
    CDFs: the empirical CDF of the training values pooled over assets, and a fixed prior CDF,
    uniform in ``asinh(x / 0.01)`` on [-5, 5] (``upper``/``lower``: [0, 5]; volume: scale 0.1 on
    [-10, 10]). The empirical half puts fine bins where candles are dense (at an FX-sized move of
    0.5% a bin is ~6e-5 wide); the prior half caps every bin's width at ~3% of the move's size for
    any move up to e^5, also beyond the training range. Why: the 2%-of-std reconstruction bound has
    to hold for every asset over all periods, and with the 70% date cutoff on ../shared/data the
    training period holds only 740 crypto candles; later crypto days reach 3x the largest training
    close return (DOGE: log return 1.52). Measured worst asset (close RMSE / close std, vocab 1024):
    plain pooled quantiles 56% (SUSHI-USD), a 50/50 mixture with a uniform CDF over the training
    range 16.5% (COMP-USD): both send those days to an outer bin that decodes to the training
    extreme. This mixture: 0.90% (KSM-USD), median asset 0.50%, with the training unigram of the
    close channel still at a perplexity of ~700 of 1024 bins (other weights and scales: see the
    note in tests/test_tokenizer.py). Quantiles are exact (one sort per channel, no sampling; the
    prior part of the CDF is inverted in closed form) and rounded to a 1e-9 grid; duplicates
    (constant-price stretches make a large atom at 0) are merged and the missing edges added by
    splitting the widest gaps in asinh units. So the tokenizer is a deterministic function of the
    training frame, and values beyond the training range get fine bins up to |x| = 5; only moves
    beyond that (and beyond the training range) share an outer bin.

    **Beyond the shared API:** ``encode_frame`` (all assets of a long frame at once, the fast path:
    3.6M candles fit + encode in 1.2-2.7 s on 2 cores, see bench/tokenizer.py) and ``bin_counts``
    (training candles per bin, the training unigram). Encoding is vectorised per channel (channels
    in threads on large inputs; a table-driven bucketizer equal to ``np.searchsorted``).

    **Scale** (``scale_lambda`` in (0, 1); 0, the default, is none): the four price features of candle t are
    divided by sigma_t, a past-only EWMA of the asset's squared close returns (tokenizer_scale.py), before binning,
    and the bins are fitted on those z values (the priors of tokenizer_scale.PRIOR_Z). ``decode_values`` are then in
    sigma units; ``decode``/``decode_paths`` take the sigma of the first decoded candle and run the recursion along
    the path, so they return prices. ``sigma`` gives sigma per token row, ``next_sigma`` the one of the candle after
    a history. A file without the ``scale`` field is a tokenizer without one.

    The fitted tokenizer is saved as JSON (``save``/``load``), never pickle.
    """

    VERSION = 1

    def __init__(self, vocab_size: int = 1024, use_volume: bool = False, volume_window: int = 20,
                 scale_lambda: float = 0.0):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 2:
            raise MarketGPTError(f"vocab_size must be an integer >= 2, got {vocab_size!r}")
        if isinstance(volume_window, bool) or not isinstance(volume_window, (int, np.integer)) or volume_window < 1:
            raise MarketGPTError(f"volume_window must be an integer >= 1, got {volume_window!r}")
        self.vocab_size = int(vocab_size)
        self.use_volume = bool(use_volume)
        self.volume_window = int(volume_window)
        self.scale_lambda = 0.0 if scale_lambda == 0 else scale.check_lambda(scale_lambda)
        self.scale_prior: float | None = None   # sigma_0, fitted
        self._edges: dict[str, np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        self._counts: dict[str, np.ndarray] = {}
        self._buckets: dict[str, Bucketizer] = {}  # derived from the edges, never saved
        self.placement: dict = {}

    # ---- properties ----
    @property
    def channels(self) -> list[str]:
        return list(PRICE_CHANNELS) + (["volume"] if self.use_volume else [])

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def scaled(self) -> bool:
        return self.scale_lambda > 0

    @property
    def fitted(self) -> bool:
        return bool(self._edges)

    def __repr__(self) -> str:
        return (f"CandleTokenizer(vocab_size={self.vocab_size}, use_volume={self.use_volume}, "
                f"volume_window={self.volume_window}, scale_lambda={self.scale_lambda}, fitted={self.fitted})")

    # ---- features ----
    def _features_cm(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Features of every candle but each asset's first, channel-major: (C, rows), their frame positions, and
        their sigma (None without a scale): the price features divided by it."""
        out, rows, asset = self._raw_features_cm(frame)
        if not self.scaled:
            return out, rows, None
        sigma = scale.ewma_sigma(out[0], asset, self.scale_lambda, self.scale_prior)
        out[:len(scale.SCALED)] /= sigma
        return out, rows, sigma

    def _raw_features_cm(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The unscaled features (C, rows), their frame positions and the asset index of each row."""
        first = asset_starts(frame)
        check_date_order(frame, first)
        o, h, l, c = (as_float(frame, k) for k in _PRICE_COLUMNS)
        for name, x in zip(_PRICE_COLUMNS, (o, h, l, c)):
            if not (np.isfinite(x).all() and (x > 0).all()):
                bad = int(np.flatnonzero(~(np.isfinite(x) & (x > 0)))[0])
                raise MarketGPTError(f"candle frame row {bad}: prices must be finite and > 0, {name} is {x[bad]}")
        rows = np.flatnonzero(~first)
        out = np.empty((self.num_channels, rows.size))
        cp = c[rows - 1]
        oo, cc = o[rows], c[rows]
        np.log(cc / cp, out=out[0])
        np.log(oo / cp, out=out[1])
        np.log(h[rows] / np.maximum(oo, cc), out=out[2])
        np.log(np.minimum(oo, cc) / l[rows], out=out[3])
        if self.use_volume:
            out[4] = volume_feature(frame, first, self.volume_window)[rows]
        return out, rows, np.cumsum(first)[rows] - 1

    @staticmethod
    def _check_one_asset(frame: pd.DataFrame) -> None:
        if "symbol" in frame.columns and len(frame) and frame["symbol"].nunique() > 1:
            raise MarketGPTError("features/encode take one asset; use encode_frame for a long frame of many assets")

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """Features of one asset's candles: (n - 1, num_channels) float64, rows 1..n-1 of `frame`."""
        self._check_one_asset(frame)
        feats, _, _ = self._features_cm(frame)
        return np.ascontiguousarray(feats.T)

    def sigma(self, frame: pd.DataFrame) -> np.ndarray | None:
        """sigma of each token row of encode_frame(frame) (M,), or None without a scale."""
        self._check_fitted()
        return self._features_cm(frame)[2]

    def next_sigma(self, frame: pd.DataFrame) -> float | None:
        """sigma of the candle after the last of one asset's candles (from their returns only), or None."""
        self._check_fitted()
        if not self.scaled:
            return None
        feats, _, sigma = self._features_cm(frame)
        return self._sigma_after(feats, sigma)

    def _sigma_after(self, feats_cm: np.ndarray, sigma: np.ndarray) -> float:
        if sigma.size == 0:
            return self.scale_prior
        return float(scale.next_sigma(sigma[-1], feats_cm[0, -1] * sigma[-1], self.scale_lambda))

    def encode_history(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """(encode, sigma, next_sigma) of one asset's candles from one pass over its features: the forecaster needs
        all three at every origin, over an asset's whole history when it is scaled."""
        self._check_fitted()
        self._check_one_asset(frame)
        feats, _, sigma = self._features_cm(frame)
        tokens = np.ascontiguousarray(self._encode_cm(feats).T)
        return tokens, sigma, (None if sigma is None else self._sigma_after(feats, sigma))

    # ---- fit ----
    def fit(self, frame: pd.DataFrame) -> "CandleTokenizer":
        """Fit the bins on a long frame of the training period (features per symbol, pooled)."""
        feats, _, asset = self._raw_features_cm(frame)
        if feats.shape[1] == 0:
            raise MarketGPTError("cannot fit the tokenizer: the frame has no asset with two or more candles")
        priors = {}
        if self.scaled:
            self.scale_prior = scale.prior_sigma(feats[0], asset)
            feats[:len(scale.SCALED)] /= scale.ewma_sigma(feats[0], asset, self.scale_lambda, self.scale_prior)
            priors = scale.PRIOR_Z
        fitted = map_channels(lambda k: fit_channel(feats[k], self.vocab_size, self.channels[k],
                                                    prior=priors.get(self.channels[k])),
                               list(range(self.num_channels)), feats.shape[1])
        self._edges = {name: f[0] for name, f in zip(self.channels, fitted)}
        self._values = {name: f[1] for name, f in zip(self.channels, fitted)}
        self._counts = {name: f[2] for name, f in zip(self.channels, fitted)}
        self._buckets = {}
        self.placement = placement(self.channels, priors)
        return self

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise MarketGPTError("the tokenizer is not fitted: call fit() or load() first")

    # ---- encode / decode ----
    def encode_features(self, feats: np.ndarray) -> np.ndarray:
        """(m, num_channels) features -> (m, num_channels) int64 tokens in [0, vocab_size)."""
        self._check_fitted()
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.num_channels:
            raise MarketGPTError(f"features must have shape (m, {self.num_channels}), got {feats.shape}")
        return np.ascontiguousarray(self._encode_cm(feats.T).T)

    def _encode_cm(self, feats_cm: np.ndarray) -> np.ndarray:
        if np.isnan(feats_cm).any():
            raise MarketGPTError("features contain NaN")
        out = np.empty(feats_cm.shape, dtype=np.int64)

        def one(k: int) -> None:
            name = self.channels[k]
            if name not in self._buckets:
                self._buckets[name] = Bucketizer(self._edges[name])
            out[k] = self._buckets[name](feats_cm[k])

        map_channels(one, list(range(self.num_channels)), feats_cm.shape[1])
        return out

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """Tokens of one asset's candles: (n - 1, num_channels) int64, rows 1..n-1 of `frame`."""
        return self.encode_history(frame)[0]

    def encode_frame(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of all assets of a long frame at once (sorted by symbol then date).

        Returns (tokens, row_index): tokens (M, num_channels) int64 for every candle but each asset's
        first, and row_index (M,) int64, the positional row of `frame` each token row belongs to.
        Same tokens as `encode` per asset; no feature uses two symbols.
        """
        self._check_fitted()
        feats, rows, _ = self._features_cm(frame)
        return np.ascontiguousarray(self._encode_cm(feats).T), rows.astype(np.int64)

    def _check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.num_channels:
            raise MarketGPTError(f"tokens must have shape (m, {self.num_channels}), got {tokens.shape}")
        if tokens.size and (not np.issubdtype(tokens.dtype, np.integer)
                            or tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise MarketGPTError(f"tokens must be integers in [0, {self.vocab_size})")
        return tokens.astype(np.int64, copy=False)

    def decode_features(self, tokens: np.ndarray) -> np.ndarray:
        """(m, num_channels) tokens -> (m, num_channels) float64 decode values (price ones in sigma units when
        scaled)."""
        self._check_fitted()
        tokens = self._check_tokens(tokens)
        out = np.empty(tokens.shape, dtype=np.float64)
        for k, name in enumerate(self.channels):
            out[:, k] = self._values[name][tokens[:, k]]
        return out

    def decode(self, tokens: np.ndarray, prev_close, sigma=None) -> np.ndarray:
        """Tokens (m, num_channels) -> (m, 4) float64 candles, columns [open, high, low, close].

        `prev_close` scalar: the tokens are a path; each decoded close is the next candle's Cp.
        `prev_close` array (m,): row i uses prev_close[i] (one-step decoding). Volume tokens carry no
        price and are ignored here. A path whose cumulative move leaves the float64 range raises. `sigma` (scaled
        tokenizers only, shaped like prev_close): the scale of the first decoded candle.
        """
        tokens = self._check_tokens(tokens)
        pc = np.asarray(prev_close, dtype=np.float64)
        if pc.ndim == 0:
            return self.decode_paths(tokens[None], pc, sigma)[0]
        if pc.shape != (tokens.shape[0],):
            raise MarketGPTError(f"prev_close must be a scalar or have shape ({tokens.shape[0]},), got {pc.shape}")
        return self.decode_paths(tokens[:, None], pc, sigma)[:, 0]

    def decode_paths(self, tokens: np.ndarray, prev_close, sigma=None) -> np.ndarray:
        """Token paths (n, h, num_channels) -> (n, h, 4) float64 candles [open, high, low, close]: path i starts
        from prev_close (a scalar, or one value per path), each decoded close being the next candle's Cp. A scaled
        tokenizer needs `sigma`, the scale of each path's first candle (a scalar or one per path); each decoded close
        return updates it by the EWMA recursion for the next candle."""
        self._check_fitted()
        tokens = np.asarray(tokens)
        if tokens.ndim != 3:
            raise MarketGPTError(f"token paths must have shape (n, h, {self.num_channels}), got {tokens.shape}")
        n, h, c = tokens.shape
        pc = np.asarray(prev_close, dtype=np.float64)
        if pc.ndim == 0:
            pc = np.full(n, float(pc))
        elif pc.shape != (n,):
            raise MarketGPTError(f"prev_close must be a scalar or have shape ({n},), got {pc.shape}")
        if not (np.isfinite(pc).all() and (pc > 0).all()):
            raise MarketGPTError(f"prev_close must be finite and > 0, got {prev_close!r}")
        with np.errstate(over="ignore", under="ignore"):  # checked below
            f = self.decode_features(tokens.reshape(n * h, c)).reshape(n, h, c)
            if self.scaled:
                f[..., :len(scale.SCALED)] *= self._path_sigma(f[..., 0], sigma, n)[..., None]
                np.clip(f[..., :len(scale.SCALED)], -scale.MAX_MOVE, scale.MAX_MOVE, out=f[..., :len(scale.SCALED)])
            # cumprod keeps each step's ratio C_k / C_{k-1} exact to one rounding
            path = np.cumprod(np.concatenate([pc[:, None], np.exp(f[..., 0])], axis=1), axis=1)
            cp, close = path[:, :-1], path[:, 1:]
            open_ = cp * np.exp(f[..., 1])
            high = np.maximum(open_, close) * np.exp(f[..., 2])
            low = np.minimum(open_, close) / np.exp(f[..., 3])
            out = np.stack([open_, high, low, close], axis=-1)
        if not (np.isfinite(out).all() and (out > 0).all()):
            raise MarketGPTError("decoded prices leave the float64 range (path too long or prev_close too extreme)")
        return out

    def _path_sigma(self, z_close: np.ndarray, sigma, n: int) -> np.ndarray:
        """(n, h) sigma along each path from its first candle's sigma and its close values in sigma units."""
        s = np.broadcast_to(np.asarray(np.nan if sigma is None else sigma, dtype=np.float64), (n,)).copy()
        if not (np.isfinite(s).all() and (s > 0).all()):
            raise MarketGPTError(f"a scaled tokenizer decodes with sigma, the scale of the first candle (a positive "
                                 f"number or one per path), got {sigma!r}")
        out = np.empty(z_close.shape)
        for k in range(z_close.shape[1]):   # a loop over the horizon, vectorised over paths
            out[:, k] = s
            s = scale.next_sigma(s, z_close[:, k] * s, self.scale_lambda)
        return out

    # ---- bins ----
    def _channel(self, channel: str) -> str:
        self._check_fitted()
        if channel not in self._edges:
            raise MarketGPTError(f"unknown channel {channel!r}; channels: {self.channels}")
        return channel

    def bin_edges(self, channel: str) -> np.ndarray:
        """Inner bin edges of `channel`: (vocab_size - 1,), strictly increasing."""
        return self._edges[self._channel(channel)].copy()

    def bin_values(self, channel: str) -> np.ndarray:
        """Decode value of each bin of `channel`: (vocab_size,)."""
        return self._values[self._channel(channel)].copy()

    def bin_counts(self, channel: str) -> np.ndarray:
        """Training candles in each bin of `channel`: (vocab_size,) int64 (the training unigram)."""
        return self._counts[self._channel(channel)].copy()

    # ---- serialisation ----
    def to_dict(self) -> dict:
        self._check_fitted()
        return {
            "format": FORMAT,
            "version": self.VERSION,
            "vocab_size": self.vocab_size,
            "use_volume": self.use_volume,
            "volume_window": self.volume_window,
            "channels": self.channels,
            "bin_placement": self.placement,
            **({"scale": scale.to_dict(self.scale_lambda, self.scale_prior)} if self.scaled else {}),
            "bins": {name: {"edges": [float(x) for x in self._edges[name]],
                            "values": [float(x) for x in self._values[name]],
                            "train_counts": [int(x) for x in self._counts[name]]}
                     for name in self.channels},
        }

    @classmethod
    def from_dict(cls, d: Any) -> "CandleTokenizer":
        if not isinstance(d, dict):
            raise MarketGPTError("tokenizer data must be a JSON object")
        if d.get("format") != FORMAT:
            raise MarketGPTError(f"not a tokenizer file: format is {d.get('format')!r}, expected {FORMAT!r}")
        if d.get("version") != cls.VERSION:
            raise MarketGPTError(f"tokenizer file version {d.get('version')!r} is not supported (this is version {cls.VERSION})")
        try:
            if not isinstance(d["use_volume"], bool):
                raise MarketGPTError(f"use_volume must be true or false, got {d['use_volume']!r}")
            lam, s0 = scale.from_dict(d["scale"]) if "scale" in d else (0.0, None)
            tok = cls(d["vocab_size"], d["use_volume"], d["volume_window"], lam)
            tok.scale_prior = s0
            bins = d["bins"]
            if d.get("channels") != tok.channels:
                raise MarketGPTError(f"channels {d.get('channels')!r} do not match use_volume={tok.use_volume}")
            edges, values, counts = {}, {}, {}
            for name in tok.channels:
                b = bins[name]
                e = np.asarray(b["edges"], dtype=np.float64)
                v = np.asarray(b["values"], dtype=np.float64)
                c = np.asarray(b["train_counts"], dtype=np.int64)
                if e.shape != (tok.vocab_size - 1,) or v.shape != (tok.vocab_size,) or c.shape != (tok.vocab_size,):
                    raise MarketGPTError(
                        f"channel {name!r}: expected {tok.vocab_size - 1} edges and {tok.vocab_size} values/counts, "
                        f"got {e.size} edges, {v.size} values, {c.size} counts")
                if not (np.isfinite(e).all() and np.isfinite(v).all()) or (np.diff(e) <= 0).any():
                    raise MarketGPTError(f"channel {name!r}: edges must be finite and strictly increasing, values finite")
                if (np.searchsorted(e, v, side="right") != np.arange(tok.vocab_size)).any():
                    raise MarketGPTError(f"channel {name!r}: a decode value lies outside its bin")
                if name in NONNEGATIVE and (v < 0).any():
                    raise MarketGPTError(f"channel {name!r}: decode values must be >= 0")
                edges[name], values[name], counts[name] = e, v, c
            placement = d["bin_placement"]
            if not isinstance(placement, dict):
                raise MarketGPTError("bin_placement must be a JSON object")
        except (KeyError, TypeError, ValueError) as exc:
            raise MarketGPTError(f"malformed tokenizer data: {type(exc).__name__}: {exc}") from None
        tok._edges, tok._values, tok._counts = edges, values, counts
        tok._buckets = {}
        tok.placement = placement  # as written by the fit, kept so that save(load(f)) == f
        return tok

    def save(self, path) -> None:
        """Write the tokenizer as JSON, atomically (temp file in the same folder + os.replace)."""
        path = Path(path)
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False) + "\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")   # open() honours the umask, as every other file
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path) -> "CandleTokenizer":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MarketGPTError(f"tokenizer file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise MarketGPTError(f"cannot read tokenizer file {path}: {exc}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MarketGPTError(f"tokenizer file {path} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(d)
        except MarketGPTError as exc:
            raise MarketGPTError(f"tokenizer file {path}: {exc}") from None
