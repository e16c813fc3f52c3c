"""What an evaluation scores: a run's own split, or another universe or period the run was not trained on.

On other data the candles are tokenized with the run's fixed bins into a token store of their own. The candles
dated <= `start` are the history: context for the first windows and the fitting data of every baseline (labelled
"train" in that store); the candles in (start, end] are scored (labelled "test"). Assets the run never saw go
through its unknown-asset embedding (zero-shot) and are listed as new; `IdMap` turns the store's asset and
category indices into the model's ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import MarketGPTError


@dataclass
class Source:
    store: object                 # TokenStore to score
    candles: pd.DataFrame         # the long frame behind it (for the multi-horizon forecasts)
    categories: dict[str, str]
    start: pd.Timestamp | None    # scored period (start, end]
    end: pd.Timestamp | None
    description: dict             # written into the results


class IdMap:
    """A model called with a foreign store's asset indices: maps them to the run's asset and category ids."""

    def __init__(self, model, asset_ids, category_ids):
        import torch

        self.model = model
        self.asset_ids = torch.as_tensor(asset_ids)
        self.category_ids = torch.as_tensor(category_ids)

    def parameters(self):
        return self.model.parameters()

    def __call__(self, tokens, asset, category, targets=None, **inputs):
        device = tokens.device
        index = asset.cpu()
        return self.model(tokens, self.asset_ids[index].to(device), self.category_ids[index].to(device), targets,
                          **inputs)


def run_source(cfg, store, split: str) -> Source:
    """The run's own data: its token store and, for the multi-horizon forecasts, its cached candles and split."""
    from ..dataset import load_split_candles

    universe, candles, time_split = load_split_candles(cfg.data)
    start, end = time_split.period(split)
    return Source(store, candles, dict(zip(universe.symbol, universe.category)), start, end,
                  {"data": "the run's own", "split": split})


def parse_date(value, option: str):
    """A YYYY-MM-DD option as a Timestamp (None when not given), checked like every other date option."""
    from ..config import check_date

    return pd.Timestamp(check_date(str(value).strip(), option)) if value not in (None, "") else None


def other_source(forecaster, universe: str, provider: str, data_dir, start, end) -> tuple[Source, IdMap]:
    """Another universe or period: see the module docstring. start defaults to the end of the run's val period
    (so the run's own assets are scored on days it never trained or chose a checkpoint on)."""
    from ..data import TimeSplit, load_candles, load_universe
    from ..dataset import build_store

    frame = load_universe(universe)
    candles = load_candles(frame, provider, data_dir)
    start = parse_date(start, "--start") or parse_date(_val_end(forecaster.run_dir), "the run's val_end")
    end = parse_date(end, "--end")
    if end is not None and end <= start:
        raise MarketGPTError(f"--end {end:%Y-%m-%d} must come after the start {start:%Y-%m-%d}")
    if end is not None:
        candles = candles[candles.date <= end]
    scored = candles[candles.date > start]
    if scored.empty:
        raise MarketGPTError(f"no candles of {universe} after {start:%Y-%m-%d}: nothing to score")
    split = TimeSplit(start, start, {"train": int((candles.date <= start).sum()), "val": 0, "test": len(scored)})
    store = build_store(candles, frame, forecaster.tokenizer, split)
    categories = dict(zip(frame.symbol, frame.category))
    new = [s for s in store.symbols if s not in forecaster.asset_ids]
    if new and not forecaster.can_forecast_new:
        raise MarketGPTError(f"{', '.join(new)}: not among the run's assets, and {forecaster.why_not_new()}")
    ids = [forecaster.ids(s, categories[s])[:2] for s in store.symbols]
    source = Source(store, candles, categories, start, end,
                    {"data": "other", "universe": str(universe), "provider": provider,
                     "start": f"{start:%Y-%m-%d}", "end": f"{end:%Y-%m-%d}" if end is not None else None,
                     "new_assets": new})
    return source, IdMap(forecaster.model, [a for a, _ in ids], [c for _, c in ids])


def _val_end(run_dir: Path):
    from ..config import read_json

    return read_json(Path(run_dir) / "data_info.json", "data info")["split"]["val_end"]
