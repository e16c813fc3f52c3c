"""Candle validation: every bad row is named (source, row, date, rule), then fails the load or is dropped and counted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import MarketGPTError

COLUMNS = ("date", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close")
POLICIES = ("fail", "drop")

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


def _parse(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    dates = pd.to_datetime(frame["date"].astype(str).str.strip().str.slice(0, 10), errors="coerce", format="%Y-%m-%d")
    if not pd.api.types.is_datetime64_any_dtype(frame["date"]) and dates.isna().all() and len(frame):
        dates = pd.to_datetime(frame["date"], errors="coerce", utc=True).dt.tz_localize(None).dt.normalize()
    values = {c: pd.to_numeric(frame[c], errors="coerce").astype("float64") for c in PRICES + ("volume",)}
    parsed = pd.DataFrame({"date": dates, **values}, index=frame.index)
    bad_date = dates.isna()
    nan = parsed[list(PRICES) + ["volume"]].isna().any(axis=1)
    return parsed, bad_date, nan


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
    frame: pd.DataFrame, source: str, policy: str = "fail", row_label: str = "row"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Return clean candles (date ascending, float64) and the number of dropped rows per rule.

    Messages name each bad row by its 1-based position, or with `row_label="line"` by the frame's index
    (the line number in the file it was read from).
    With policy `fail` the first bad row raises; with `drop` bad rows are removed and counted.
    Rows out of order are sorted (not an error); duplicate dates are bad rows (which one is right is unknowable).
    """
    if policy not in POLICIES:
        raise MarketGPTError(f"on_bad_rows must be one of {', '.join(POLICIES)}, got '{policy}'")
    frame = normalize_columns(frame, source)
    rows = np.arange(1, len(frame) + 1) if row_label == "row" else frame.index.to_numpy()
    frame = frame.reset_index(drop=True)
    parsed, bad_date, nan = _parse(frame)
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
            raise MarketGPTError(f"{source}: {row_label} {rows[i]} (date {date}): {RULES[rule]} [{rule}] ({values})")
        counts[rule] = int(fresh.sum())
        taken |= fresh
    clean = parsed.loc[~taken].sort_values("date", kind="stable").reset_index(drop=True)
    return clean, counts
