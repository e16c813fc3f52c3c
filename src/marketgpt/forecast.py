"""The forecasting face of a run: `Forecaster.from_pretrained(run_dir).predict(candles)` -> `Forecast`.

A forecast holds, per asset, sample paths of whole candles (num_samples x horizon x [open, high, low, close]
prices, float64) on the asset's own calendar, drawn from the run's model channel by channel (see generate.py).
Every statistic (quantiles of the close and of the cumulative log return, P(up), mean, median) is read off those
paths, so they agree with each other and with what a backtest of the paths would see.

**As-of rule.** A forecast as of date t uses the candles dated <= t only (and the run's weights and tokenizer, which
saw the training period only). Nothing else about the asset enters: the history is tokenized by the run's fixed
bins, with no normalisation fitted on the history itself.

**New tickers.** A symbol the run never saw is forecast through the run's "unknown asset" embedding, and a category
it never saw through the "unknown category" one. Both are trained by asset dropout (training.asset_dropout); a run
trained without them (before they existed, or with asset_dropout 0) forecasts its own assets only and says so.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import check_date
from .dataset import weekday
from .data.universe import CATEGORIES
from .data.validate import validate_candles
from .errors import MarketGPTError
from .run import load_run
from .tokenizer_scale import model_input

#: the longest horizon a forecast may ask for: a year of trading days. Longer paths are re-primed many times over
#: and say little; the bound also keeps a request's memory predictable.
MAX_HORIZON = 252
#: sample paths per asset at most, and the most float64 path values one request may hold (2 GiB)
MAX_SAMPLES = 100_000
MAX_PATH_VALUES = 2**28
DEFAULT_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: categories whose markets trade every calendar day; the others trade on business days
EVERY_DAY_CATEGORIES = ("crypto",)
PRICE_COLUMNS = ("open", "high", "low", "close")


def calendar_of(dates: pd.Series, category: str | None) -> str:
    """'daily' (every calendar day) or 'business' (Monday to Friday), inferred from the asset's own history: a
    market with candles on weekends trades every day. With fewer than 10 candles the category decides."""
    recent = pd.DatetimeIndex(dates[-60:])
    if len(recent) >= 10:
        return "daily" if (recent.day_of_week >= 5).mean() > 0.05 else "business"
    return "daily" if category in EVERY_DAY_CATEGORIES else "business"


def future_dates(as_of: pd.Timestamp, horizon: int, calendar: str) -> pd.DatetimeIndex:
    """The `horizon` dates after as_of on the calendar (holidays are not known here: business days are Mon-Fri)."""
    start = as_of + pd.Timedelta(days=1)
    if calendar == "daily":
        return pd.date_range(start, periods=horizon, freq="D")
    return pd.bdate_range(start, periods=horizon)


def level_name(level: float) -> str:
    """Column suffix of a quantile level: 0.05 -> 'q05', 0.5 -> 'q50', 0.975 -> 'q97.5'."""
    pct = 100 * level
    return f"q{pct:02.0f}" if abs(pct - round(pct)) < 1e-9 else f"q{pct:g}"


def check_levels(levels) -> tuple[float, ...]:
    try:
        out = tuple(float(q) for q in levels)
    except (TypeError, ValueError):
        raise MarketGPTError(f"quantile levels must be numbers in (0, 1), got {levels!r}") from None
    if not out or not all(0 < q < 1 for q in out):
        raise MarketGPTError(f"quantile levels must be numbers in (0, 1), got {levels!r}")
    return out


@dataclass
class AssetForecast:
    """Sample paths of one asset: paths (num_samples, horizon, 4) prices [open, high, low, close]."""

    symbol: str
    category: str | None
    as_of: pd.Timestamp
    last_close: float
    dates: pd.DatetimeIndex
    paths: np.ndarray
    known: bool            # the run trained on this asset (else: the unknown-asset embedding)
    calendar: str
    history: pd.DataFrame = field(repr=False)   # the candles the forecast used (dated <= as_of)

    @property
    def close(self) -> np.ndarray:
        """(num_samples, horizon) close prices."""
        return self.paths[..., 3]

    @property
    def log_returns(self) -> np.ndarray:
        """(num_samples, horizon) cumulative log returns ln(C_{t+h} / C_t) against the as-of close."""
        return np.log(self.close / self.last_close)

    def prob_up(self, h: int | None = None):
        """P(C_{t+h} > C_t): a float for one horizon day h (1-based), else an array over every h."""
        p = (self.close > self.last_close).mean(axis=0)
        return p if h is None else float(p[_horizon_index(h, len(self.dates))])


def _horizon_index(h: int, horizon: int) -> int:
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or not 1 <= h <= horizon:
        raise MarketGPTError(f"horizon day must be an integer in 1..{horizon}, got {h!r}")
    return int(h) - 1


@dataclass
class Forecast:
    """Forecasts of several assets by one model. `failed` names the assets that could not be forecast and why."""

    assets: dict[str, AssetForecast]
    failed: dict[str, str]
    horizon: int
    num_samples: int
    model: str
    seed: int

    @property
    def symbols(self) -> list[str]:
        return list(self.assets)

    def __getitem__(self, symbol: str) -> AssetForecast:
        try:
            return self.assets[symbol]
        except KeyError:
            why = f" ({self.failed[symbol]})" if symbol in self.failed else ""
            raise MarketGPTError(f"no forecast for {symbol!r}{why}; forecast assets: {', '.join(self.assets)}") from None

    def _frame(self, columns) -> pd.DataFrame:
        """Long frame (symbol, as_of, date, horizon) plus the statistic columns {name: fn(asset) -> (horizon,)}."""
        parts = []
        for a in self.assets.values():
            part = pd.DataFrame({"symbol": a.symbol, "as_of": a.as_of, "date": a.dates,
                                 "horizon": np.arange(1, self.horizon + 1)})
            for name, fn in columns.items():
                part[name] = fn(a)
            parts.append(part)
        if not parts:
            return pd.DataFrame(columns=["symbol", "as_of", "date", "horizon", *columns])
        return pd.concat(parts, ignore_index=True)

    def quantiles(self, levels=DEFAULT_LEVELS) -> pd.DataFrame:
        """Per asset and horizon day: the close price (`close_q05`, ...) and the cumulative log return
        (`return_q05`, ...) at each level, from the sample paths (np.quantile, linear interpolation)."""
        levels = check_levels(levels)
        cols = {}
        for q in levels:
            cols[f"close_{level_name(q)}"] = lambda a, q=q: np.quantile(a.close, q, axis=0)
        for q in levels:
            cols[f"return_{level_name(q)}"] = lambda a, q=q: np.quantile(a.log_returns, q, axis=0)
        return self._frame(cols)

    def prob_up(self, h: int) -> pd.Series:
        """P(close h days ahead > the as-of close), per symbol."""
        return pd.Series({s: a.prob_up(h) for s, a in self.assets.items()}, name=f"prob_up_{h}", dtype=float)

    def mean(self) -> pd.DataFrame:
        return self._frame({"mean": lambda a: a.close.mean(axis=0)})

    def median(self) -> pd.DataFrame:
        return self._frame({"median": lambda a: np.median(a.close, axis=0)})

    def to_frame(self, levels=DEFAULT_LEVELS) -> pd.DataFrame:
        """The long forecast table: symbol, as_of, date, horizon, model, last_close, mean, median, prob_up, the close
        and log-return quantiles, mean_return; one row per asset and horizon day."""
        levels = check_levels(levels)
        frame = self._frame({
            "model": lambda a: self.model,
            "last_close": lambda a: a.last_close,
            "mean": lambda a: a.close.mean(axis=0),
            "median": lambda a: np.median(a.close, axis=0),
            "prob_up": lambda a: a.prob_up(),
            "mean_return": lambda a: a.log_returns.mean(axis=0),
        })
        q = self.quantiles(levels)
        return pd.concat([frame, q.drop(columns=["symbol", "as_of", "date", "horizon"])], axis=1)

    def save(self, path, levels=DEFAULT_LEVELS) -> Path:
        """Write to_frame() as Parquet, CSV or JSON (records), by the file's extension, atomically."""
        return write_table(self.to_frame(levels), path)


def write_table(frame: pd.DataFrame, path) -> Path:
    """A frame as Parquet, CSV or JSON records by the file's extension, atomically (temp file + rename)."""
    path = Path(path)
    kind = path.suffix.lower()
    if kind not in (".parquet", ".csv", ".json"):
        raise MarketGPTError(f"{path}: output must end in .parquet, .csv or .json")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif kind == ".csv":
            frame.to_csv(tmp, index=False, date_format="%Y-%m-%d")
        else:
            frame.to_json(tmp, orient="records", date_format="iso", indent=1)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MarketGPTError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


class Forecaster:
    """A run's model, tokenizer and asset table, ready to forecast (eval mode, no gradients)."""

    def __init__(self, run_dir: Path, cfg, tokenizer, store, model):
        self.run_dir, self.cfg, self.tokenizer, self.model = Path(run_dir), cfg, tokenizer, model
        self.name = self.run_dir.name     # the model id in forecast tables: the run directory's name
        self.symbols = list(store.symbols)
        self.asset_ids = {s: i for i, s in enumerate(store.symbols)}
        self.category_of = dict(zip(store.symbols, store.categories))
        self.category_ids = {c: i for i, c in enumerate(store.category_names)}
        self.can_forecast_new = model.unknown_asset is not None and cfg.training.asset_dropout > 0

    @classmethod
    def from_pretrained(cls, run_dir, device=None) -> "Forecaster":
        """Load a finished run directory: config, tokenizer and best weights (weights_only=True), eval mode."""
        cfg, tokenizer, store, model, _ = load_run(run_dir, device)
        return cls(run_dir, cfg, tokenizer, store, model)

    @property
    def device(self):
        return self.model.tok_emb.weight.device

    def why_not_new(self) -> str:
        if self.model.unknown_asset is None:
            return (f"the run {self.run_dir} has no unknown-asset embedding (trained before it existed), so it "
                    f"forecasts only its own {len(self.symbols)} assets; retrain it to forecast new tickers")
        return (f"the run {self.run_dir} was trained with training.asset_dropout=0, so its unknown-asset embedding is "
                f"untrained; it forecasts only its own {len(self.symbols)} assets")

    def ids(self, symbol: str, category: str | None) -> tuple[int, int, bool]:
        """(asset id, category id, known) of a symbol; raises for a new symbol the run cannot forecast."""
        if symbol in self.asset_ids:
            return self.asset_ids[symbol], self.category_ids[self.category_of[symbol]], True
        if not self.can_forecast_new:
            raise MarketGPTError(f"{symbol} is not one of the run's assets: {self.why_not_new()}")
        if category is not None and category not in self.category_ids and category not in CATEGORIES:
            raise MarketGPTError(f"{symbol}: unknown category {category!r} (known: {', '.join(CATEGORIES)})")
        cat = self.category_ids.get(category, self.model.unknown_category)
        return self.model.unknown_asset, cat, False

    def predict(self, candles: pd.DataFrame, horizon: int = 21, num_samples: int = 512, seed: int = 0,
                temperature: float | None = None, as_of=None, top_p: float | None = None, max_batch: int | None = None,
                categories: dict[str, str] | None = None, on_step=None) -> Forecast:
        """Forecast every symbol of a long candle frame (symbol, date, open, high, low, close[, volume]).

        Only candles dated <= as_of (default: each asset's last date) are used. `categories` (or a `category`
        column) names the category of symbols the run never saw. Assets that cannot be forecast are listed in
        Forecast.failed with the reason; the others are forecast. on_step(n): progress, n candles sampled (of
        assets x num_samples x horizon). temperature None: the run's model as evaluation scores it (its calibrated
        close temperature and widths, if any); a number replaces that calibration on every channel (generate.py)."""
        from .generate import PathScale, Prompt, sample_paths

        horizon, num_samples, max_batch = _check_request(horizon, num_samples, max_batch, temperature, top_p, seed)
        if not isinstance(candles, pd.DataFrame) or candles.empty:
            raise MarketGPTError("candles must be a pandas DataFrame with rows, got " + (
                "an empty frame" if isinstance(candles, pd.DataFrame) else type(candles).__name__))
        if categories is not None and not isinstance(categories, dict):
            raise MarketGPTError(f"categories must be a dict of symbol -> category, got {type(categories).__name__}")
        missing = [c for c in ("symbol", "date", *PRICE_COLUMNS) if c not in candles.columns]
        if missing:
            raise MarketGPTError(f"candle frame: missing column(s) {', '.join(missing)}; expected symbol, date, "
                                 f"open, high, low, close[, volume]; found {', '.join(map(str, candles.columns))}")
        if self.tokenizer.use_volume and "volume" not in candles.columns:
            raise MarketGPTError("candle frame: the run uses volume, but the frame has no volume column")
        cutoff = _as_of(as_of)
        cats = dict(categories or {})
        if "category" in candles.columns:
            for sym, cat in candles.groupby("symbol", sort=False)["category"].first().items():
                cats.setdefault(sym, cat)
        prompts, infos, failed = [], [], {}
        for symbol, frame in candles.groupby("symbol", sort=False):
            symbol = str(symbol)
            try:
                info = self._prepare(symbol, frame, cutoff, cats.get(symbol))
            except MarketGPTError as exc:
                failed[symbol] = str(exc)
                continue
            hist = info["history"]
            info["calendar"] = calendar_of(hist.date, info["category"])
            info["dates"] = future_dates(pd.Timestamp(hist.date.iloc[-1]), horizon, info["calendar"])
            days = weekday(np.concatenate([hist.date.to_numpy()[-len(info["tokens"]):], info["dates"].to_numpy()]))
            prompts.append(Prompt(info.pop("tokens"), info["asset_id"], info["category_id"],
                                  zlib.crc32(symbol.encode()), info.pop("scale"), info["sigma"], days))
            infos.append(info)
        if len(prompts) * num_samples * horizon * 4 > MAX_PATH_VALUES:
            raise MarketGPTError(f"{len(prompts)} assets x {num_samples} samples x {horizon} days need "
                                 f"{len(prompts) * num_samples * horizon * 32 / 2**30:.1f} GiB of paths (limit "
                                 f"{MAX_PATH_VALUES * 8 / 2**30:.0f} GiB); ask for fewer samples or assets")
        paths = sample_paths(self.model, prompts, horizon, num_samples, seed, temperature, top_p, max_batch,
                             on_step=on_step, path_scale=PathScale.of(self.tokenizer)) if prompts else []
        assets = {}
        for info, tokens in zip(infos, paths):
            hist = info["history"]
            last_close = float(hist.close.iloc[-1])
            assets[info["symbol"]] = AssetForecast(
                info["symbol"], info["category"], pd.Timestamp(hist.date.iloc[-1]), last_close, info["dates"],
                self.tokenizer.decode_paths(tokens, last_close, info["sigma"]), info["known"], info["calendar"], hist)
        return Forecast(assets, failed, horizon, num_samples, self.name, seed)

    def _prepare(self, symbol: str, frame: pd.DataFrame, cutoff, category: str | None) -> dict:
        """Validated history up to the cutoff and its tokens (the last context_length of them); for a scaled
        tokenizer also the model's scale inputs and sigma of the next candle, from the whole history (the EWMA starts
        at the asset's first candle, as in training)."""
        columns = ["date", *PRICE_COLUMNS] + (["volume"] if "volume" in frame.columns else [])
        clean, _ = validate_candles(frame[columns], f"candles of {symbol}")
        if len(clean) and cutoff is not None:
            first, last = clean.date.iloc[0], clean.date.iloc[-1]
            if cutoff < first:
                raise MarketGPTError(f"{symbol}: as-of {cutoff:%Y-%m-%d} is before its first candle ({first:%Y-%m-%d})")
            if cutoff > last:
                raise MarketGPTError(f"{symbol}: as-of {cutoff:%Y-%m-%d} is after its last candle ({last:%Y-%m-%d})")
            clean = clean[clean.date <= cutoff]
        if len(clean) < 2:
            raise MarketGPTError(f"{symbol}: {len(clean)} candle(s) up to the as-of date; a forecast needs at least 2 "
                                 f"(the first is only the reference of the second)")
        asset_id, category_id, known = self.ids(symbol, category)
        # the candles behind the last context_length tokens; the volume feature's trailing mean also needs the
        # volume window before them
        extra = self.tokenizer.volume_window if self.tokenizer.use_volume else 0
        T = self.cfg.model.context_length
        history = clean if self.tokenizer.scaled else clean.tail(T + 1 + extra)
        history = history.reset_index(drop=True)
        tokens, row_sigma, sigma = self.tokenizer.encode_history(history)
        tokens = tokens[-T:]
        scale = None if sigma is None else model_input(np.append(row_sigma[1:], sigma))[-T:]
        return {"symbol": symbol, "tokens": tokens, "asset_id": asset_id, "category_id": category_id, "known": known,
                "category": self.category_of.get(symbol, category), "history": clean.reset_index(drop=True),
                "scale": scale, "sigma": sigma}


def _as_of(as_of):
    """A date, or a string in YYYY-MM-DD only: "01/02/2020" is refused rather than guessed day- or month-first."""
    if as_of is None:
        return None
    if isinstance(as_of, str):
        return pd.Timestamp(check_date(as_of.strip(), "as-of date"))
    try:
        stamp = pd.Timestamp(as_of)
    except (TypeError, ValueError):
        stamp = pd.NaT
    if pd.isna(stamp):   # NaN and NaT read as "not a time", which no candle is up to
        raise MarketGPTError(f"as-of date {as_of!r} is not a date (expected YYYY-MM-DD)")
    return stamp.normalize()


def _check_request(horizon, num_samples, max_batch, temperature, top_p, seed) -> tuple[int, int, int | None]:
    def integer(name, value, lo, hi):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise MarketGPTError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        return int(value)

    horizon = integer("horizon", horizon, 1, MAX_HORIZON)
    num_samples = integer("samples", num_samples, 1, MAX_SAMPLES)
    max_batch = None if max_batch is None else integer("max batch", max_batch, 1, 2**24)
    integer("seed", seed, 0, 2**63 - 1)
    if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                        and temperature >= 0):
        raise MarketGPTError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise MarketGPTError(f"top-p must be in (0, 1], got {top_p!r}")
    return horizon, num_samples, max_batch


__all__ = ["AssetForecast", "Forecast", "Forecaster", "MAX_HORIZON", "calendar_of", "future_dates"]
