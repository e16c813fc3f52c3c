"""Candle validation: every bad row is named (source, row, date, rule), then fails the load or is dropped and counted."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from ..errors import MarketGPTError

COLUMNS = ("date", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
POLICIES = ("fail", "drop")
# The date formats a file may use; each file is read with one of them (see parse_dates).
DATE_FORMATS = ("%Y-%m-%d", "%Y/%m/%d", "%Y.%m.%d", "%Y%m%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y",
                "%m-%d-%Y")

# Rule name -> human description; the order is the order in which rules are checked.
RULES = {
    "bad_date": "date is missing or not a date",
    "not_a_number": "a price or volume is missing or not a number",
    "non_finite": "a price or volume is infinite",
    "non_positive_price": "a price is zero or negative",
    "high_below_low": "high < low",
    "high_below_open_close": "high < max(open, close)",
    "low_above_open_close": "low > min(open, close)",
    "negative_volume": "volume is negative",
    "duplicate_date": "the date appears more than once",
}


def check_policy(policy: str) -> str:
    """on_bad_rows: checked where candles are loaded, not only when a bad row finally meets it."""
    if policy not in POLICIES:
        raise MarketGPTError(f"on_bad_rows must be one of {', '.join(POLICIES)}, got '{policy}'")
    return policy


def normalize_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Lower-case column names, accept `Date`/`timestamp` for date, and require OHLC; volume defaults to 0."""
    renamed = {c: str(c).strip().lower().replace(" ", "_") for c in frame.columns}
    frame = frame.rename(columns=renamed)
    for alias in ("timestamp", "datetime", "time"):
        if "date" not in frame.columns and alias in frame.columns:
            frame = frame.rename(columns={alias: "date"})
    missing = [c for c in COLUMNS[:5] if c not in frame.columns]
    if missing:
        raise MarketGPTError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}; "
            f"expected {','.join(COLUMNS)}"
        )
    if "volume" not in frame.columns:
        frame = frame.assign(volume=0.0)
    return frame[list(COLUMNS)]


def _parse(frame: pd.DataFrame, source: str, date_format: str) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    dates = parse_dates(frame["date"], source, date_format)
    values = {c: pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in PRICES + ("volume",)}
    parsed = pd.DataFrame({"date": dates, **values}, index=frame.index)
    bad_date = dates.isna()
    nan = parsed[list(PRICES) + ["volume"]].isna().any(axis=1)
    return parsed, bad_date, nan


def parse_dates(column: pd.Series, source: str, date_format: str = "") -> pd.Series:
    """Calendar dates of one file's date column, read with a single format for the whole file.

    Strings are read with `date_format` if given, else with the one format of DATE_FORMATS that reads the most of
    them; a file that two formats read alike but differently (01/02/2020: 1 February or January 2?) is refused,
    since guessing would swap day and month silently. A time after the date is ignored, but many times per date
    mean intraday candles, which are refused rather than reduced to one false daily candle. Unreadable dates are
    NaT (bad rows)."""
    if pd.api.types.is_datetime64_any_dtype(column):   # local wall-clock dates of timestamps
        stamps = column.dt.tz_localize(None) if column.dt.tz is not None else column
        dates = stamps.dt.normalize()
        _check_daily(dates, stamps - dates, source)
        return dates
    return _read_text_dates(column.astype(str).str.strip(), source, date_format)


def _read_text_dates(text: pd.Series, source: str, date_format: str) -> pd.Series:
    """parse_dates of strings: one format for the file, chosen or given."""
    if date_format:   # the format covers any time of day too
        values, times, formats = text[text != ""], None, (date_format,)
    else:
        parts = text.str.extract(r"^([^\sT]*)[\sT]*(.*)$")
        values, times, formats = parts[0][parts[0] != ""], parts[1], DATE_FORMATS
    reads = {fmt: pd.to_datetime(values, format=fmt, errors="coerce") for fmt in formats}
    best = max(r.notna().sum() for r in reads.values())
    if len(values) and not best:
        first = text[values.index[0]]
        raise MarketGPTError(f"{source}: no date reads with --date-format {date_format} (first: '{first}')"
                             if date_format else
                             f"{source}: dates in an unknown format (first: '{first}'); expected YYYY-MM-DD "
                             f"(or give the format, e.g. --date-format %d/%m/%Y)")
    fits = [fmt for fmt, r in reads.items() if r.notna().sum() == best]
    for other in fits[1:]:
        differ = (reads[fits[0]] != reads[other]) & reads[other].notna()
        if differ.any():
            i = differ.to_numpy().argmax()
            raise MarketGPTError(
                f"{source}: ambiguous dates: '{text[values.index[i]]}' reads as {reads[fits[0]].iloc[i]:%Y-%m-%d} with "
                f"{fits[0]} and as {reads[other].iloc[i]:%Y-%m-%d} with {other}; give the format with "
                f"--date-format '{fits[0]}' or --date-format '{other}'")
    stamps = reads[fits[0]].reindex(text.index)
    dates = stamps.dt.normalize()
    _check_daily(dates, stamps - dates if times is None else times.where(dates.notna()), source)
    return dates


def check_date_format(date_format: str) -> str:
    """A strptime format with a year, a month and a day, that reads back a date it wrote."""
    try:
        probe = datetime(2001, 2, 3)
        ok = datetime.strptime(probe.strftime(date_format), date_format).date() == probe.date()
    except ValueError:
        ok = False
    if not ok:
        raise MarketGPTError(f"--date-format {date_format}: not a date format with year, month and day "
                             f"(e.g. %d/%m/%Y or %m/%d/%Y)")
    return date_format


def _check_daily(dates: pd.Series, times: pd.Series, source: str) -> None:
    """Refuse intraday candles: several distinct times on at least half of the dates."""
    known = dates.notna() & times.notna()
    per_date = times[known].groupby(dates[known]).nunique()
    multi = per_date[per_date > 1]
    if len(multi) and len(multi) >= len(per_date) / 2:
        raise MarketGPTError(
            f"{source}: intraday timestamps ({int(known.sum())} rows on {len(per_date)} dates, e.g. {multi.iloc[0]} "
            f"times on {multi.index[0]:%Y-%m-%d}); expected one daily candle per date: resample to daily first")


def _rule_masks(parsed: pd.DataFrame, bad_date: pd.Series, nan: pd.Series) -> dict[str, np.ndarray]:
    p = parsed
    with np.errstate(invalid="ignore"):
        masks = {
            "bad_date": bad_date.to_numpy(),
            "not_a_number": nan.to_numpy(),
            "non_finite": np.isinf(p[list(PRICES) + ["volume"]].to_numpy()).any(axis=1),
            "non_positive_price": (p[list(PRICES)] <= 0).any(axis=1).to_numpy(),
            "high_below_low": (p.high < p.low).to_numpy(),
            "high_below_open_close": (p.high < np.maximum(p.open, p.close)).to_numpy(),
            "low_above_open_close": (p.low > np.minimum(p.open, p.close)).to_numpy(),
            "negative_volume": (p.volume < 0).to_numpy(),
        }
    return masks


def validate_candles(
    frame: pd.DataFrame, source: str, policy: str = "fail", row_label: str = "row", date_format: str = "",
    start: str | None = None, end: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return clean candles (date ascending, float64) dated from `start` to `end`, and the number of dropped rows
    per rule.

    Messages name each bad row by its 1-based position, or with `row_label="line"` by the frame's index
    (the line number in the file it was read from).
    With policy `fail` the first bad row raises; with `drop` bad rows are removed and counted.
    Rows out of order are sorted (not an error); duplicate dates are bad rows (which one is right is unknowable).
    Rows dated outside start..end are left out before the rules, so that bad rows already counted when earlier
    dates were cached are not counted again; rows without a readable date are always checked.
    """
    check_policy(policy)
    frame = normalize_columns(frame, source)
    rows = np.arange(1, len(frame) + 1) if row_label == "row" else frame.index.to_numpy()
    frame = frame.reset_index(drop=True)
    parsed, bad_date, nan = _parse(frame, source, date_format)
    outside = (parsed.date < pd.Timestamp(start)) if start else pd.Series(False, index=parsed.index)
    if end:
        outside |= parsed.date > pd.Timestamp(end)
    if outside.any():
        keep = ~outside.to_numpy()
        rows, frame = rows[keep], frame.loc[keep].reset_index(drop=True)
        parsed, bad_date, nan = (x.loc[keep].reset_index(drop=True) for x in (parsed, bad_date, nan))
    masks = _rule_masks(parsed, bad_date, nan)
    dup = parsed.date.duplicated(keep=False).to_numpy() & ~masks["bad_date"]
    masks["duplicate_date"] = dup
    counts: dict[str, int] = {}
    taken = np.zeros(len(frame), dtype=bool)
    for rule, mask in masks.items():
        fresh = mask & ~taken
        if not fresh.any():
            continue
        if policy == "fail":
            i = int(np.flatnonzero(fresh)[0])
            date = frame["date"].iloc[i]
            values = ", ".join(f"{c}={frame[c].iloc[i]}" for c in COLUMNS[1:])
            same_date = np.flatnonzero((parsed.date == parsed.date[i]).to_numpy() & dup)
            twin = f"; the same date is on {row_label} {rows[same_date[same_date != i][0]]}" if rule == "duplicate_date" else ""
            raise MarketGPTError(f"{source}: {row_label} {rows[i]} (date {date}): {RULES[rule]} [{rule}] ({values})"
                                 f"{twin}")
        counts[rule] = int(fresh.sum())
        taken |= fresh
    clean = parsed.loc[~taken].sort_values("date", kind="stable").reset_index(drop=True)
    return clean, counts
