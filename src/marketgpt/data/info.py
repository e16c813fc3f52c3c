"""Per-asset and per-category summary of a cached universe (`marketgpt data info`)."""

from __future__ import annotations

import pandas as pd

from .cache import CandleCache

# A gap is a break between consecutive candles longer than a weekend plus a holiday (crypto trades daily).
GAP_DAYS = {"crypto": 1}
DEFAULT_GAP_DAYS = 4


def asset_summary(asset: pd.Series, cache: CandleCache) -> dict:
    row = {"symbol": asset.symbol, "category": asset.category, "cached": False, "rows": 0,
           "first": "", "last": "", "gaps": 0, "max_gap_days": 0, "dropped": 0}
    prov = cache.provenance(asset.symbol)
    if prov is None:
        return row
    dates = cache.read(asset.symbol).date
    steps = dates.diff().dt.days.dropna()
    row.update(cached=True, rows=len(dates), first=dates.min().strftime("%Y-%m-%d"),
               last=dates.max().strftime("%Y-%m-%d"),
               gaps=int((steps > GAP_DAYS.get(asset.category, DEFAULT_GAP_DAYS)).sum()),
               max_gap_days=int(steps.max()) if len(steps) else 0, dropped=sum(prov.dropped.values()),
               dropped_by_rule=prov.dropped, source=prov.source)
    return row


def universe_info(universe: pd.DataFrame, cache: CandleCache) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (per asset, per category) tables."""
    assets = pd.DataFrame([asset_summary(a, cache) for _, a in universe.iterrows()])
    categories = assets.groupby("category", sort=False).agg(
        assets=("symbol", "size"), cached=("cached", "sum"), rows=("rows", "sum"), gaps=("gaps", "sum"),
        dropped=("dropped", "sum")).reset_index()
    return assets, categories


def format_info(assets: pd.DataFrame, categories: pd.DataFrame) -> str:
    cols = ["symbol", "category", "rows", "first", "last", "gaps", "max_gap_days", "dropped"]
    lines = [assets[cols].to_string(index=False), "", categories.to_string(index=False), "",
             f"total: {len(assets)} assets, {int(assets.cached.sum())} cached, {int(assets.rows.sum())} candles"]
    return "\n".join(lines)


def empty_cache_hint(cache: CandleCache, command: str) -> str:
    """Where `data info` looked when it found nothing, what else is cached there, and how to fill it."""
    where = f"{cache.root}" + ("" if cache.root.parent.is_dir() or not cache.root.parent.exists()
                               else f" ({cache.root.parent} is a file, not a folder)")
    others = sorted(p.name for p in cache.root.parent.glob("*/") if p != cache.root and any(p.glob("*.parquet"))) \
        if cache.root.parent.is_dir() else []
    found = f"; candles of other providers are cached there: {', '.join(others)} (--provider)" if others else ""
    return f"nothing cached under {where}{found}; fill it with `{command}`"
