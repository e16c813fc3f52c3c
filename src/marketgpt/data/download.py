"""Download a universe into the cache, fetching only the dates the cache does not have yet."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

from ..config import DATE_FORMAT, check_date, writable_dir
from ..errors import MarketGPTError
from ..progress import progress
from .cache import CandleCache, Provenance
from .providers import NoCandles, Provider
from .validate import validate_candles

DAY = pd.Timedelta(days=1)


@dataclass
class DownloadReport:
    updated: dict[str, int] = field(default_factory=dict)   # symbol -> new rows written
    unchanged: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)    # symbol -> one-line reason
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)   # symbol -> why it was read again from scratch
    no_volume: dict[str, str] = field(default_factory=dict)  # symbol -> source whose new candles have no volume


def check_dates(start: str, end: str) -> tuple[str, str]:
    """The --start/--end dates as zero-padded YYYY-MM-DD (the cache compares them as strings), start <= end."""
    start, end = check_date(start, "--start"), check_date(end, "--end")
    if start and end and start > end:
        raise MarketGPTError(f"--start {start} is after --end {end}")
    return start, end


def _missing_ranges(prov: Provenance | None, cached: pd.DataFrame | None, start: str, end: str) -> list[tuple[str, str]]:
    """Date ranges to fetch: before what was requested earlier, and after the last cached candle."""
    if prov is None or cached is None or cached.empty:
        return [(start, end)]
    ranges = []
    if start and (not prov.requested_start or start < prov.requested_start):
        first = cached.date.min() - DAY
        ranges.append((start, first.strftime(DATE_FORMAT)))
    after = (cached.date.max() + DAY).strftime(DATE_FORMAT)
    if not end or after <= end:
        ranges.append((after, end))
    return ranges


def source_change(prov: Provenance | None, stamp: dict) -> str:
    """What changed in an asset's source file since it was cached ("" when nothing did or there is no file)."""
    if prov is None or not stamp or prov.source_stamp == stamp:
        return ""
    old = prov.source_stamp
    if not old:
        return f"{stamp['file']}: the cache does not record the file's size and time"
    what = [f"{key} {old.get(key)} -> {stamp[key]}" for key in ("file", "size", "modified") if old.get(key) != stamp[key]]
    return f"{stamp['file']} changed since it was cached ({', '.join(what) or 'content'})"


def update_asset(asset: pd.Series, provider: Provider, cache: CandleCache, start: str, end: str,
                 policy: str, refresh: bool = False) -> tuple[int, dict[str, int], str, str]:
    """Fetch what is missing for one asset, validate it and merge it into the cache; return (new rows, dropped,
    why the cache was read again from scratch, the source of new candles without any volume or "": a file without
    a volume column is read with volume 0, which must be said, since model.use_volume would learn nothing there). A source file that changed since it was cached, or `refresh`,
    replaces the cached candles instead of adding to them: an edited row must not be kept in its old form."""
    prov = cache.provenance(asset.symbol)
    stamp = provider.stamp(asset)
    changed = source_change(prov, stamp) or ("--refresh" if refresh and prov else "")
    if changed:
        prov = None
    cached = cache.read(asset.symbol) if prov else None
    ranges = _missing_ranges(prov, cached, start, end)
    parts = [] if cached is None else [cached]
    dropped = dict(prov.dropped) if prov else {}
    source = prov.source if prov else ""
    new_rows, no_volume = 0, ""
    for lo, hi in ranges:
        try:
            fetched = provider.fetch(asset, lo or None, hi or None)
        except NoCandles:
            if cached is not None:
                continue   # nothing new in this range
            raise
        candles, counts = validate_candles(fetched.frame, f"{fetched.source} (asset {asset.symbol})", policy,
                                           fetched.row_label, fetched.date_format, lo or None, hi or None)
        for rule, n in counts.items():
            dropped[rule] = dropped.get(rule, 0) + n
        new_rows += len(candles)
        if len(candles) and not candles.volume.to_numpy().any():
            no_volume = fetched.source
        parts.append(candles)
        source = fetched.source
    if not new_rows and cached is not None:
        return 0, dropped, changed, ""
    merged = pd.concat(parts, ignore_index=True).drop_duplicates("date", keep="last").sort_values("date")
    if merged.empty:
        raise MarketGPTError(f"{source or provider.name} (asset {asset.symbol}): no valid candles")
    requested_start = min(filter(None, [start, prov.requested_start if prov else ""]), default="")
    cache.write(asset.symbol, merged, Provenance(
        provider=provider.name, provider_symbol=provider.provider_symbol(asset),
        requested_start=requested_start, requested_end=end or "",
        fetched_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), source=source, dropped=dropped,
        source_stamp=stamp))
    return new_rows, dropped, changed, no_volume


def download_universe(universe: pd.DataFrame, provider: Provider, cache: CandleCache, start: str = "",
                      end: str = "", policy: str = "fail", refresh: bool = False) -> DownloadReport:
    """Update every asset (`refresh`: read each again from scratch); one asset's failure is reported and does not
    stop the others."""
    start, end = check_dates(start, end)
    writable_dir(cache.root, "cache folder (--data-dir)")
    provider.prepare()
    report = DownloadReport()
    for asset in progress(list(universe.itertuples(index=False)), desc=f"download ({provider.name})"):
        asset = pd.Series(asset._asdict())
        try:
            rows, dropped, changed, no_volume = update_asset(asset, provider, cache, start, end, policy, refresh)
        except MarketGPTError as exc:
            report.failed[asset.symbol] = str(exc)
            continue
        if changed:
            report.changed[asset.symbol] = changed
        if rows:
            report.updated[asset.symbol] = rows
        else:
            report.unchanged.append(asset.symbol)
        if dropped:
            report.dropped[asset.symbol] = dropped
        if no_volume:
            report.no_volume[asset.symbol] = no_volume
    return report
