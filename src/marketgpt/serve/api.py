"""The REST API over the signal log (FastAPI): read endpoints for signals, assets, history and the monitor, a
forecast endpoint on the served run, and the one write endpoint, POST /v1/signals/run, behind a bearer token.

Why FastAPI: pydantic bodies give the bounds and the 422 messages for free, and /docs is the OpenAPI page. Every
error a client can cause is a 4xx with {"error": "<one line>"}; anything else is a 500 with a fixed message and the
traceback stays in the server's log. The server binds 127.0.0.1 unless told otherwise, the write endpoint is off
until MARKETGPT_API_TOKEN is set, and reads are open unless `protect_reads` is set.

Forecasts and signal runs share one lock: the model computes on all cores, so two at once only thrash the caches;
reads never wait for it (SQLAlchemy's pool serves them from the thread pool meanwhile).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import MarketGPTError
from ..signals import HORIZON_NAMES
from . import queries
from .db import open_db, shown
from .schemas import (SYMBOL_LENGTH, Error, ForecastRequest, ForecastResponse, Health, SignalsRunRequest,
                      SignalsRunResponse)

TOKEN_ENV = "MARKETGPT_API_TOKEN"
STATIC = Path(__file__).with_name("static")
#: request bodies above this are refused with 413 before they are parsed (the largest valid body, 1000 symbols
#: in a signals run, is about 20 KB)
MAX_BODY_BYTES = 64 * 1024
log = logging.getLogger("marketgpt.api")
Symbol = Annotated[str | None, Query(min_length=1, max_length=SYMBOL_LENGTH)]
NeedSymbol = Annotated[str, Query(min_length=1, max_length=SYMBOL_LENGTH)]
Horizon = Annotated[str | None, Query(pattern=f"^({'|'.join(HORIZON_NAMES)})$",
                                      description=f"one of {', '.join(HORIZON_NAMES)}")]
Model = Annotated[str | None, Query(max_length=255, description="the model (run directory name)")]


@dataclass
class Settings:
    db: str | None = None
    data_dir: str | None = None
    run: str | None = None
    universe: str | None = None     # what forecasts and signal runs read: the run's universe and provider unless set
    provider: str | None = None
    backtest: str | None = None
    protect_reads: bool = False
    max_samples: int = 2048
    max_horizon: int = 63
    token: str | None = None    # default: $MARKETGPT_API_TOKEN when the app is created


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """The first few problems, each with the field it is in: "query.as_of: ...", "symbol: Field required"."""
    parts = []
    for e in exc.errors()[:5]:
        loc = [str(x) for x in e.get("loc", ())]
        if e.get("type") == "json_invalid":
            parts.append(f"request body: not valid JSON ({e.get('ctx', {}).get('error', 'decode error')})")
        elif loc == ["body"] and e.get("type") in ("model_attributes_type", "dict_type"):
            parts.append("request body: expected a JSON object, sent with Content-Type: application/json")
        else:
            parts.append(f"{'.'.join(x for x in loc if x != 'body') or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _within(name: str, value: int, limit: int) -> None:
    if value > limit:
        raise HTTPException(422, f"{name}: at most {limit} on this server, got {value}")


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes ends in 413 while it is read, with or without Content-Length."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await _error(413, f"request body over {self.limit} bytes")(scope, receive, send)


class _TooLarge(Exception):
    pass


def served_run_dir(run) -> Path:
    """--run: a finished run (config, tokenizer, token store and weights), checked before the server starts, not at
    the first request."""
    from ..run import check_run_dir

    try:
        return check_run_dir(run)
    except MarketGPTError as exc:
        raise MarketGPTError(f"--run {run}: not a finished run ({exc})") from None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app on `settings.db` (default: SQLite in the data dir), its schema migrated on start."""
    settings = settings or Settings()
    token = settings.token if settings.token is not None else os.environ.get(TOKEN_ENV) or None
    run_dir = served_run_dir(settings.run) if settings.run else None
    if settings.backtest and not (Path(settings.backtest) / "equity.png").is_file():
        raise MarketGPTError(f"--backtest {settings.backtest}: no equity.png there (give the -o folder of "
                             f"`marketgpt backtest`)")
    backtest = Path(settings.backtest) if settings.backtest else (run_dir / "backtest" if run_dir else None)
    engine = open_db(settings.db, settings.data_dir)
    compute = threading.Lock()
    forecaster = {}

    def served_run() -> Path:
        if run_dir is None:
            raise HTTPException(409, "the server has no model: start it with --run RUN_DIR")
        return run_dir

    def get_forecaster():
        served_run()
        if "model" not in forecaster:
            from ..forecast import Forecaster

            forecaster["model"] = Forecaster.from_pretrained(run_dir)
        return forecaster["model"]

    app = FastAPI(title="MarketGPT", version=__version__, description=__doc__.split("\n\n")[0],
                  responses={400: {"model": Error}, 401: {"model": Error}, 404: {"model": Error},
                             422: {"model": Error}})
    app.state.engine, app.state.settings, app.state.writes_enabled = engine, settings, token is not None

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc):
        return _error(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(MarketGPTError)
    async def user_error(_request, exc):
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal error; the server's log has the details")

    def require_token(request: Request) -> None:
        if token is None:
            raise HTTPException(403, f"writes are disabled: start the server with {TOKEN_ENV} set")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def read_access(request: Request) -> None:
        if settings.protect_reads:
            require_token(request)

    reads = [Depends(read_access)]

    @app.get("/health", response_model=Health)
    def health():
        from .migrate import current

        return Health(status="ok", version=__version__, database=shown(engine.url.render_as_string(False)),
                      schema_revision=current(engine), run=str(run_dir) if run_dir else None,
                      signals=queries.count(engine))

    @app.get("/v1/assets", dependencies=reads)
    def list_assets():
        return {"assets": queries.assets(engine)}

    @app.get("/v1/signals", dependencies=reads)
    def list_signals(as_of: date | None = None, symbol: Symbol = None, horizon: Horizon = None,
                     model: Model = None):
        day, rows = queries.signals(engine, as_of, symbol, horizon, model)
        return {"as_of": day.isoformat() if day else None, "count": len(rows), "signals": rows}

    @app.get("/v1/signals/history", dependencies=reads)
    def signal_history(symbol: NeedSymbol, horizon: Horizon = None,
                       model: Model = None,
                       limit: Annotated[int, Query(ge=1, le=queries.MAX_ROWS)] = 1000):
        rows = queries.history(engine, symbol, horizon, model, limit)
        if not rows:
            raise HTTPException(404, f"no logged signals for symbol {symbol!r}")
        return {"symbol": symbol, "count": len(rows), "signals": rows}

    @app.get("/v1/fan", dependencies=reads)
    def fan(symbol: NeedSymbol, as_of: date | None = None,
            days: Annotated[int, Query(ge=5, le=1000)] = 120):
        from .charts import fan_data

        return fan_data(engine, symbol, as_of, days)

    monitor_cache, monitor_lock = {}, threading.Lock()

    @app.get("/v1/monitor", dependencies=reads)
    def monitor(model: Model = None, horizon: Horizon = None):
        """The report is cached per query and recomputed only when the log's fingerprint (queries.log_state) changed:
        one aggregate query per call instead of the whole report (bench/api_load.py). Clients wait on one lock, so
        32 of them at a change compute it once."""
        from .monitor import monitor_report

        with monitor_lock:
            state = queries.log_state(engine)
            key = (model, horizon)
            if monitor_cache.get(key, (None,))[0] != state:
                if len(monitor_cache) >= 64:
                    monitor_cache.clear()
                monitor_cache[key] = (state, monitor_report(engine=engine, run=model, horizon=horizon))
            return monitor_cache[key][1]

    @app.get("/v1/backtest/equity.png", dependencies=reads, response_class=FileResponse)
    def equity():
        path = backtest / "equity.png" if backtest else None
        if path is None or not path.is_file():
            raise HTTPException(404, "no backtest to show: start the server with --backtest DIR "
                                     "(the -o folder of `marketgpt backtest`)")
        return FileResponse(path, media_type="image/png")

    @app.post("/v1/forecast", response_model=ForecastResponse, dependencies=reads)
    def forecast(body: ForecastRequest):
        from .forecast_api import forecast_one

        _within("samples", body.samples, settings.max_samples)
        _within("horizon", body.horizon, settings.max_horizon)
        model = get_forecaster()
        with compute:
            return forecast_one(model, body, settings)

    @app.post("/v1/signals/run", response_model=SignalsRunResponse, dependencies=[Depends(require_token)])
    def run_signals(body: SignalsRunRequest):
        from .forecast_api import run_and_log

        _within("samples", body.samples, settings.max_samples)
        served = served_run()     # compute_signals loads the run itself, as `marketgpt signals` does
        with compute:
            return run_and_log(served, body, settings, engine)

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="dashboard")
    app.add_middleware(BodyLimit)
    return app
