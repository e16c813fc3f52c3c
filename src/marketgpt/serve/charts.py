"""The data of the dashboard's fan chart of one symbol: its closes up to the as-of day, the logged close bands at
each horizon (5-95% and 25-75%, median), the signal per horizon, and what was realised after, on one axis of
bars from the as-of close (negative: history, positive: ahead), which the page draws as SVG."""

from __future__ import annotations

import math
from datetime import date

from fastapi import HTTPException

from . import queries


def _num(value):
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else float(value)


def fan_data(engine, symbol: str, as_of: date | None, days: int) -> dict:
    import numpy as np
    import pandas as pd

    from .outcomes import closes_of

    day, rows = queries.signals(engine, as_of, symbol)
    if not rows:
        raise HTTPException(404, f"no logged signals for symbol {symbol!r}" + (f" on {as_of}" if as_of else ""))
    model = rows[0]["model"]
    rows = [r for r in rows if r["model"] == model]
    bands = []
    for r in rows:
        median = (r["last_close"] * math.exp(r["median_log_return"])
                  if r["last_close"] is not None and r["median_log_return"] is not None else None)
        bands.append({"horizon": r["horizon"], "bars": r["bars"], "q05": r["close_q05"], "q25": r["close_q25"],
                      "median": median, "q75": r["close_q75"], "q95": r["close_q95"], "prob_up": r["prob_up"],
                      "signal": r["signal"], "realised_close": r["realised_close"]})
    history, after, note = [], [], None
    source = queries.history_source(engine, symbol)
    closes, failed = closes_of(source[0], [symbol], source[1], source[2]) if source else ({}, {})
    if symbol in closes:
        dates, close = closes[symbol]
        end = int(np.searchsorted(dates, np.datetime64(pd.Timestamp(day)), side="right"))
        horizon = max(b["bars"] for b in bands)
        history = [{"bar": i - end + 1, "date": f"{pd.Timestamp(d):%Y-%m-%d}", "close": _num(c)}
                   for i, (d, c) in enumerate(zip(dates[:end], close[:end])) if i >= end - days]
        after = [{"bar": i + 1, "date": f"{pd.Timestamp(d):%Y-%m-%d}", "close": _num(c)}
                 for i, (d, c) in enumerate(zip(dates[end:end + horizon], close[end:end + horizon]))]
    else:
        note = failed.get(symbol, "no history source logged")
    return {"symbol": symbol, "model": model, "as_of": day.isoformat(), "last_close": rows[0]["last_close"],
            "bands": bands, "history": history, "realised": after, "history_error": note}
