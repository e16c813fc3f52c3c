"""The API's two model calls: a forecast of one symbol from the served run, and today's signals computed and logged
(the same path as `marketgpt signals --log`). Both read the history from the data layer like the CLI does."""

from __future__ import annotations

from fastapi import HTTPException

from ..errors import MarketGPTError
from .schemas import ForecastResponse, ForecastStep, SignalsRunResponse

LEVEL_NAMES = ("q05", "q25", "q50", "q75", "q95")


def forecast_one(forecaster, body, settings) -> ForecastResponse:
    """Quantiles and P(up) of each day ahead for body.symbol, from the server's universe (default: the run's); an
    unknown symbol is a 404, a history that cannot be forecast (too short, or as_of before it starts) a 422."""
    from ..forecast_cli import histories_for
    from ..signals import LEVELS

    try:
        frame, candles, _, _, _ = histories_for(forecaster.run_dir, forecaster.cfg, [body.symbol], settings.universe,
                                                settings.provider, settings.data_dir)
    except MarketGPTError as exc:
        raise HTTPException(404, str(exc)) from None
    forecast = forecaster.predict(candles, body.horizon, body.samples, body.seed, as_of=body.as_of,
                                  categories=dict(zip(frame.symbol, frame.category)))
    if body.symbol in forecast.failed:
        raise HTTPException(422, forecast.failed[body.symbol])
    asset = forecast[body.symbol]
    table = forecast.to_frame(LEVELS)
    steps = [ForecastStep(step=i + 1, date=row["date"].date(), prob_up=row["prob_up"], mean_return=row["mean_return"],
                          **{f"close_{q}": row[f"close_{q}"] for q in LEVEL_NAMES},
                          **{f"return_{q}": row[f"return_{q}"] for q in LEVEL_NAMES})
             for i, row in enumerate(table.to_dict("records"))]
    return ForecastResponse(symbol=body.symbol, model=forecast.model, as_of=asset.as_of.date(),
                            last_close=asset.last_close, horizon=forecast.horizon, samples=forecast.num_samples,
                            known_asset=asset.known, calendar=asset.calendar, steps=steps)


def run_and_log(run_dir, body, settings, engine) -> SignalsRunResponse:
    """compute_signals then log_signals: one transaction for the day, replacing an earlier run of that day."""
    from ..signals import compute_signals, parse_horizon_names
    from .log import log_signals

    names = parse_horizon_names(",".join(body.horizons))
    table, forecast = compute_signals(run_dir, body.symbols, settings.universe, settings.provider, settings.data_dir,
                                      body.as_of, names, body.samples, body.seed)
    universe, provider, folder = forecast.history
    run_id = log_signals(table, run_dir, universe, provider, folder, as_of=body.as_of, engine=engine)
    return SignalsRunResponse(forecast_run_id=run_id, as_of=table.as_of.max().date(), signals=len(table),
                              assets=len(forecast.assets), failed=forecast.failed)
