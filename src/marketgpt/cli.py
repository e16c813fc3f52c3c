"""The `marketgpt` command: thin argument parsing over functions that are callable from Python too."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import MarketGPTError


def _universe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--case", "--universe", dest="universe", required=True,
                   help="sample, a, b, c, or a path to a universe CSV (symbol,category,name,yfinance,ccxt)")
    p.add_argument("--provider", default=None,
                   help="sample, yfinance, ccxt[:EXCHANGE], files:PATH (default: sample for the sample case, else yfinance)")
    p.add_argument("--data-dir", default=None, help="cache folder (default: $MARKETGPT_DATA or ./data)")


def default_provider(universe: str) -> str:
    return "sample" if universe.lower() == "sample" else "yfinance"


def cmd_data_download(args) -> int:
    from .data import CandleCache, download_universe, get_provider, load_universe

    universe = load_universe(args.universe)
    provider_name = args.provider or default_provider(args.universe)
    provider = get_provider(provider_name)
    report = download_universe(universe, provider, CandleCache(args.data_dir, provider_name),
                               args.start or "", args.end or "", args.on_bad_rows)
    print(f"updated {len(report.updated)} asset(s) ({sum(report.updated.values())} new candles), "
          f"{len(report.unchanged)} already up to date, {len(report.failed)} failed")
    for symbol, counts in report.dropped.items():
        print(f"  {symbol}: dropped " + ", ".join(f"{n} {rule}" for rule, n in counts.items()))
    for symbol, reason in report.failed.items():
        print(f"  failed {symbol}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_data_info(args) -> int:
    from .data import CandleCache, format_info, load_universe, universe_info

    universe = load_universe(args.universe)
    provider_name = args.provider or default_provider(args.universe)
    assets, categories = universe_info(universe, CandleCache(args.data_dir, provider_name))
    print(format_info(assets, categories))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marketgpt", description="Pretrain GPT-style models on tokenized market candles and evaluate them honestly.")
    parser.add_argument("--version", action="version", version=f"marketgpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="download, validate and inspect market candles")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    download = data_sub.add_parser("download", help="fetch missing candles of a universe into the cache")
    _universe_args(download)
    download.add_argument("--start", help="first date, YYYY-MM-DD")
    download.add_argument("--end", help="last date, YYYY-MM-DD (default: today)")
    download.add_argument("--on-bad-rows", choices=("fail", "drop"), default="fail",
                          help="fail on the first bad row, or drop bad rows and count them per rule")
    download.set_defaults(func=cmd_data_download)
    info = data_sub.add_parser("info", help="per asset: rows, first/last date, gaps, dropped rows; totals per category")
    _universe_args(info)
    info.set_defaults(func=cmd_data_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MarketGPTError as exc:
        print(f"marketgpt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marketgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
