"""The `marketgpt` command: thin argument parsing over functions that are callable from Python too."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .config import POSITIVE, RANGES, bounded
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
    provider = get_provider(provider_name, date_format=args.date_format or "")
    report = download_universe(universe, provider, CandleCache(args.data_dir, provider_name),
                               args.start or "", args.end or "", args.on_bad_rows, args.refresh)
    print(f"updated {len(report.updated)} asset(s) ({sum(report.updated.values())} new candles), "
          f"{len(report.unchanged)} already up to date, {len(report.failed)} failed")
    for symbol, why in report.changed.items():
        print(f"  {symbol}: read again from scratch ({why})")
    for symbol, counts in report.dropped.items():
        print(f"  {symbol}: dropped " + ", ".join(f"{n} {rule}" for rule, n in counts.items()))
    for symbol, source in report.no_volume.items():
        print(f"marketgpt: warning: {symbol}: no volume in {source} (no volume column, or every volume 0); cached "
              f"with volume 0, so a model with model.use_volume learns nothing from its volume", file=sys.stderr)
    for symbol, reason in report.failed.items():
        print(f"  failed {symbol}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def cmd_data_info(args) -> int:
    from .data import CandleCache, download_command, format_info, load_universe, universe_info
    from .data.info import empty_cache_hint

    universe = load_universe(args.universe)
    provider_name = args.provider or default_provider(args.universe)
    cache = CandleCache(args.data_dir, provider_name)
    assets, categories = universe_info(universe, cache)
    print(format_info(assets, categories))
    if not assets.cached.any():
        print(empty_cache_hint(cache, download_command(args.universe, provider_name, args.data_dir)))
    return 0


def _universe_candles(args):
    from .data import load_candles, load_universe

    universe = load_universe(args.universe)
    return load_candles(universe, args.provider or default_provider(args.universe), args.data_dir)


def cmd_tokenizer_fit(args) -> int:
    from .config import writable_file
    from .data import time_split
    from .dataset import fit_tokenizer
    from .tokenizer_inspect import format_inspection, inspect_tokenizer

    out = writable_file(args.output or f"tokenizer_{Path(args.universe).stem.lower()}_{args.vocab_size}.json",
                        "tokenizer")
    candles = _universe_candles(args)
    split = time_split(candles, args.train_ratio, args.val_ratio)
    tokenizer = fit_tokenizer(candles, split, args.vocab_size, args.volume)
    tokenizer.save(out)
    print(f"fitted on {split.counts['train']:,} training candles up to {split.train_end:%Y-%m-%d}; wrote {out}")
    print(format_inspection(inspect_tokenizer(tokenizer, candles)))
    return 0


def cmd_tokenizer_inspect(args) -> int:
    from .tokenizer import CandleTokenizer
    from .tokenizer_inspect import format_inspection, inspect_tokenizer

    tokenizer = CandleTokenizer.load(args.path)
    frame = _universe_candles(args) if args.universe else None
    print(format_inspection(inspect_tokenizer(tokenizer, frame), max_assets=None))
    return 0


def launch_local_ddp(nproc: int, argv: list[str]) -> int:
    """Re-run this command under torchrun with `nproc` processes on this node."""
    import os
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "marketgpt.cli", *argv]
    env = dict(os.environ, MARKETGPT_LAUNCHED="1")
    return subprocess.call(cmd, env=env)


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def cmd_train(args) -> int:
    import os

    if args.num_gpus > 1 and not os.environ.get("MARKETGPT_LAUNCHED") and "LOCAL_RANK" not in os.environ:
        return launch_local_ddp(args.num_gpus, strip_option(sys.argv[1:], "--num-gpus"))
    from .config import load_config

    if args.config is None and args.resume is None:
        raise MarketGPTError("train: give a CONFIG file, or --resume RUN_DIR")
    if args.resume is not None and (args.set or args.config):
        raise MarketGPTError("train --resume continues with the run's own config.json; CONFIG and --set are not used "
                             "with it")
    cfg = None
    if args.resume is None:
        overrides = list(args.set)
        if args.gradient_checkpointing:
            overrides.append("training.gradient_checkpointing=true")
        if args.compile:
            overrides.append("training.compile=true")
        cfg = load_config(args.config, overrides)
    from .train import train   # torch loads in seconds: a mistake in the config is reported before

    train(cfg, resume=args.resume, run_dir=args.run_dir)
    return 0


class Parser(argparse.ArgumentParser):
    """Usage mistakes get one line naming the option, and where the full usage is, not a screen of usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    download.add_argument("--date-format", metavar="FORMAT",
                          help="strptime format of the dates in the files provider's CSVs, e.g. %%d/%%m/%%Y "
                               "(default: detected per file; day/month vs month/day must be given)")
    download.add_argument("--refresh", action="store_true",
                          help="read every asset again from scratch instead of only the dates not cached yet")
    download.set_defaults(func=cmd_data_download)
    info = data_sub.add_parser("info", help="per asset: rows, first/last date, gaps, dropped rows; totals per category")
    _universe_args(info)
    info.set_defaults(func=cmd_data_info)

    tok = sub.add_parser("tokenizer", help="fit a candle tokenizer on the training period, or inspect one")
    tok_sub = tok.add_subparsers(dest="action", required=True, metavar="ACTION")
    fit = tok_sub.add_parser("fit", help="fit quantile bins on the training split of a cached universe")
    _universe_args(fit)
    fit.add_argument("--vocab-size", type=bounded(int, RANGES["model.vocab_size"]), default=1024,
                     help="bins per channel, 2 to 65536 (default 1024)")
    fit.add_argument("--volume", action="store_true", help="add the volume channel")
    fit.add_argument("--train-ratio", type=float, default=0.70,
                     help="share of the candles, oldest first, that the bins are fitted on (default 0.70)")
    fit.add_argument("--val-ratio", type=float, default=0.15,
                     help="share after the training period held out for validation (default 0.15); the rest is test")
    fit.add_argument("-o", "--output", help="tokenizer JSON to write (default tokenizer_<case>_<vocab>.json)")
    fit.set_defaults(func=cmd_tokenizer_fit)
    inspect = tok_sub.add_parser("inspect", help="bin ranges and usage per channel; per asset with --case")
    inspect.add_argument("path", help="tokenizer.json (e.g. RUN_DIR/tokenizer.json)")
    inspect.add_argument("--case", "--universe", dest="universe", help="also report per asset on this universe")
    inspect.add_argument("--provider", default=None, help="provider of the cached candles, as for data download")
    inspect.add_argument("--data-dir", default=None, help="cache folder (default: $MARKETGPT_DATA or ./data)")
    inspect.set_defaults(func=cmd_tokenizer_inspect)

    tr = sub.add_parser("train", help="train a config on CPU, one GPU, or N GPUs with DDP; resume a run")
    tr.add_argument("config", nargs="?", help="config JSON (configs/sample.json, configs/case_a.json, ...)")
    tr.add_argument("--num-gpus", type=bounded(int, POSITIVE), default=1,
                    help="launch N DDP processes on this node with torchrun (CPU processes with gloo when no GPU)")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run directory from its last checkpoint")
    tr.add_argument("--run-dir", help="use this run directory (resumes it when it already holds a checkpoint)")
    tr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set training.batch_size=16 (repeatable)")
    tr.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.set_defaults(func=cmd_train)

    from . import backtest, cluster_cli, ensemble, evaluate, finetune, forecast_cli, signals, walkforward
    from .serve import monitor, outcomes, server

    evaluate.add_commands(sub)
    forecast_cli.add_commands(sub)
    signals.add_commands(sub)
    backtest.add_commands(sub)
    ensemble.add_commands(sub)
    finetune.add_commands(sub)
    walkforward.add_commands(sub)
    cluster_cli.add_commands(sub)
    monitor.add_commands(sub)
    outcomes.add_commands(sub)
    server.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except MarketGPTError as exc:
        print(f"marketgpt: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # the filesystem refused something no earlier check foresaw (disk full, say)
        where = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        print(f"marketgpt: error: {where or 'file system'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("marketgpt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
