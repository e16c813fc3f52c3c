"""`marketgpt serve`: the API and dashboard under uvicorn, on 127.0.0.1 unless --host says otherwise."""

from __future__ import annotations

import sys

from ..config import POSITIVE, Range, bounded


def check_listen(host: str, port: int) -> None:
    """The address resolves and the port is free, checked before the app starts: uvicorn would report either only
    as log lines after its startup messages."""
    import socket

    from ..errors import MarketGPTError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise MarketGPTError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise MarketGPTError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc})") from None


def serve(db=None, data_dir=None, run=None, universe=None, provider=None, backtest=None, host: str = "127.0.0.1",
          port: int = 8000, protect_reads: bool = False, max_samples: int = 2048, max_horizon: int = 63) -> None:
    """Run the API until interrupted (what the command does, from Python)."""
    import uvicorn

    from .api import TOKEN_ENV, Settings, create_app

    check_listen(host, port)
    app = create_app(Settings(db=db, data_dir=data_dir, run=run, universe=universe, provider=provider,
                              backtest=backtest, protect_reads=protect_reads, max_samples=max_samples,
                              max_horizon=max_horizon))
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"marketgpt: serving on {host}, reachable from other machines; reads are "
              f"{'token-protected' if protect_reads else 'open'}", file=sys.stderr)
    if not app.state.writes_enabled:
        print(f"marketgpt: {TOKEN_ENV} is not set, so POST /v1/signals/run is disabled", file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)


def cmd_serve(args) -> int:
    serve(args.db, args.data_dir, args.run, args.universe, args.provider, args.backtest, args.host, args.port,
          args.protect_reads, args.max_samples, args.max_horizon)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="REST API and dashboard over the signal log (FastAPI + uvicorn)")
    p.add_argument("--db", help="database URL (default: SQLite <data-dir>/marketgpt.db)")
    p.add_argument("--data-dir", default=None, help="cache folder (default: $MARKETGPT_DATA or ./data)")
    p.add_argument("--run", help="run directory for POST /v1/forecast and POST /v1/signals/run")
    p.add_argument("--universe", help="universe CSV (or case) the forecasts and signal runs read (default: the "
                                      "run's)")
    p.add_argument("--provider", help="provider of that universe's candles, as for data download (default: the run's)")
    p.add_argument("--backtest", help="backtest folder (the -o of `marketgpt backtest`) whose equity curve the page "
                                      "shows (default: RUN/backtest)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=bounded(int, Range(1, 65535)), default=8000, help="port (default 8000)")
    p.add_argument("--protect-reads", action="store_true",
                   help="read endpoints need the bearer token too (default: reads are open)")
    p.add_argument("--max-samples", type=bounded(int, POSITIVE), default=2048,
                   help="largest samples a request may ask for (default 2048)")
    p.add_argument("--max-horizon", type=bounded(int, Range(1, 252)), default=63,
                   help="largest horizon of POST /v1/forecast in bars (default 63)")
    p.set_defaults(func=cmd_serve)
