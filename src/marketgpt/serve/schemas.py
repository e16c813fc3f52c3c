"""The API's request and response bodies (pydantic 2): what /docs shows, and the bounds every request is checked
against before any work starts. Unknown fields are refused, so a typo ("sample" for "samples") is a 422 naming the
field rather than a silently ignored option."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field

from ..signals import HORIZON_NAMES

#: symbols are data, never code: any printable string up to this length (the log stores 255)
SYMBOL_LENGTH = 64
#: one POST /v1/signals/run forecasts at most this many assets (the sample universe has 5, case A 600)
MAX_RUN_SYMBOLS = 1000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForecastRequest(Strict):
    symbol: str = Field(min_length=1, max_length=SYMBOL_LENGTH, description="a symbol of the run's universe")
    horizon: int = Field(21, ge=1, description="trading days ahead (calendar days for crypto); at most the "
                                               "server's --max-horizon")
    samples: int = Field(256, ge=1, description="sample paths; at most the server's --max-samples")
    as_of: date | None = Field(None, description="forecast from the close of this day (default: the last candle)")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class ForecastStep(BaseModel):
    step: int
    date: date
    prob_up: float
    mean_return: float
    close_q05: float
    close_q25: float
    close_q50: float
    close_q75: float
    close_q95: float
    return_q05: float
    return_q25: float
    return_q50: float
    return_q75: float
    return_q95: float


class ForecastResponse(BaseModel):
    symbol: str
    model: str
    as_of: date
    last_close: float
    horizon: int
    samples: int
    known_asset: bool
    calendar: str
    steps: list[ForecastStep]


class SignalsRunRequest(Strict):
    as_of: date | None = Field(None, description="signals as of the close of this day (default: the last candle)")
    symbols: list[str] | None = Field(None, max_length=MAX_RUN_SYMBOLS,
                                      description="default: every asset of the run's universe")
    horizons: list[str] = Field(list(HORIZON_NAMES), min_length=1, max_length=len(HORIZON_NAMES),
                                description=f"a subset of {', '.join(HORIZON_NAMES)}")
    samples: int = Field(256, ge=16, description="sample paths per asset; at most the server's --max-samples")
    seed: int = Field(0, ge=0, le=2**31 - 1)


class SignalsRunResponse(BaseModel):
    forecast_run_id: int
    as_of: date
    signals: int
    assets: int
    failed: dict[str, str]


class Health(BaseModel):
    status: str
    version: str
    database: str
    schema_revision: str | None
    run: str | None
    signals: int


class Error(BaseModel):
    error: str
