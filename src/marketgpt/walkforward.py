"""Walk-forward analysis: K folds, each an ordinary run trained only on what lay before its test window.

Fold f tests on the N dates [cut_f, cut_f + N) of the universe's calendar (the union of all assets' dates), the
folds' test windows being the last K x N dates, back to back. It validates (early stopping) on the V dates just
before the cut, and trains on the targets dated up to D calendar days before the validation window (the embargo;
`data.embargo_days` of the fold's config), from the first date (expanding) or from a start that moves with the cut
so every fold trains on as many dates as fold 0 (sliding). Its tokenizer is fitted on its own training period and
its universe holds the assets with a candle before its test window, so nothing on or after the cut reaches its
bins, its asset list or its weights; the data it loads ends with its test window.

Layout of a walk-forward directory:

    WF_DIR/walkforward.json      plan (fold dates, settings), per-fold status and results, the summary
    WF_DIR/config.json           the base config (what a backtest reads the assets' candles with)
    WF_DIR/universes/fold_00.csv the fold's assets
    WF_DIR/fold_00/ ...          run directories (config.json, tokenizer.json, best_model.pt, test_results.json,
                                 plus fold.json with the fold's status, oos.parquet and scores.parquet)
    WF_DIR/oos.parquet           the folds' out-of-sample forecasts stitched (DESIGN.md section 5's long table)
    WF_DIR/scores.parquet        per asset and test day: the one-step NLL/CRPS/PIT of the model and the baselines
    WF_DIR/summary.md, skill_by_fold.png

The out-of-sample table holds, per asset and as-of date of each test window, the one-step density's quantiles,
mean and P(up) read off the close head (horizon 1, `source` "density": exact, no Monte Carlo), and for longer
horizons the forecaster's sample-path rows (`source` "paths"). Folds run one after another and a killed
walk-forward resumes at the unfinished fold (its training resumes from last.pt); `cluster_walkforward` runs them as
a SLURM job array instead (`marketgpt slurm CONFIG --walkforward`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .config import Config, from_dict, load_config, read_json, writable_dir
from .errors import MarketGPTError

MODES = ("expanding", "sliding")
DEFAULT_EMBARGO = 5
DEFAULT_HORIZONS = (5, 21)
DEFAULT_HORIZON_TEXT = ",".join(map(str, DEFAULT_HORIZONS))
PLAN = "walkforward.json"


@dataclass(frozen=True)
class Fold:
    index: int
    train_start: str      # "" = the data's first date (expanding)
    train_end: str
    val_end: str          # validation: (train_end + embargo, val_end]
    test_start: str
    test_end: str

    @property
    def name(self) -> str:
        return f"fold_{self.index:02d}"


def _day(ts) -> str:
    import pandas as pd

    return pd.Timestamp(ts).strftime("%Y-%m-%d")


def plan_folds(dates, folds: int, test_days: int, val_days: int, embargo: int, mode: str = "expanding",
               min_train: int = 1) -> list[Fold]:
    """The folds over a sorted calendar of dates, or a one-line error saying how many folds would fit."""
    import numpy as np
    import pandas as pd

    dates = pd.DatetimeIndex(sorted(set(pd.DatetimeIndex(dates))))
    for name, value, lo in (("--folds", folds, 1), ("--test-days", test_days, 1), ("--val-days", val_days, 1),
                            ("--embargo", embargo, 0)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise MarketGPTError(f"walk-forward: {name} must be an integer >= {lo}, got {value!r}")
    if mode not in MODES:
        raise MarketGPTError(f"walk-forward: --mode must be one of {', '.join(MODES)}, got {mode!r}")

    def train_dates(cut: int) -> int:   # dates up to train_end for a fold whose test starts at dates[cut]
        val_start = dates[cut - val_days]
        return int(dates.searchsorted(val_start - pd.Timedelta(days=embargo + 1), side="right"))

    def fits(k: int) -> bool:
        cut = len(dates) - k * test_days
        return cut - val_days >= 1 and train_dates(cut) >= min_train

    if not fits(folds):
        most = 0
        while fits(most + 1):
            most += 1
        raise MarketGPTError(
            f"walk-forward: {folds} folds of {test_days} test days, {val_days} validation days and a {embargo}-day "
            f"embargo do not fit the {len(dates)} dates from {_day(dates[0])} to {_day(dates[-1])} (fold 0 needs "
            f">= {min_train} training dates); " + (f"at most {most} would" if most else
                                                  "not even one would: shorten --test-days or --val-days"))
    first_train = train_dates(len(dates) - folds * test_days)
    out = []
    for f in range(folds):
        cut = len(dates) - (folds - f) * test_days
        n_train = train_dates(cut)
        start = "" if mode == "expanding" or f == 0 else _day(dates[n_train - first_train])
        val_start = dates[cut - val_days]
        out.append(Fold(f, start, _day(val_start - pd.Timedelta(days=embargo + 1)), _day(dates[cut - 1]),
                        _day(dates[cut]), _day(dates[cut + test_days - 1])))
    return out


def fold_config(base: Config, fold: Fold, universe_csv: Path, embargo: int) -> Config:
    """The fold's config: the base with the fold's universe, data window and split dates; evaluated by the
    walk-forward itself (with its horizons), not at the end of training."""
    raw = base.to_dict()
    raw["name"] = f"{base.name}_{fold.name}"
    raw["data"].update(universe=str(universe_csv), start=fold.train_start or base.data.start, end=fold.test_end,
                       train_end=fold.train_end, val_end=fold.val_end, embargo_days=embargo)
    raw["training"]["evaluate"] = False
    return from_dict(raw, f"walk-forward {fold.name}")


def fold_universe(universe, candles, fold: Fold):
    """The assets with a candle before the fold's test window: an asset listed later is unknown to the fold."""
    import pandas as pd

    seen = set(candles.symbol[candles.date < pd.Timestamp(fold.test_start)])
    return universe[universe.symbol.isin(seen)]


# --- the plan ------------------------------------------------------------------------------------------------

def make_plan(config, out, folds: int, test_days: int | None = None, val_days: int | None = None,
              mode: str = "expanding", embargo: int = DEFAULT_EMBARGO, horizons=DEFAULT_HORIZONS,
              samples: int = 64, overrides=(), log=print, warm_start: bool = False, seeds: int = 1) -> Path:
    """Write WF_DIR/walkforward.json and WF_DIR/config.json (or check that an existing plan is the same one, so that
    the same command resumes it). test_days defaults to the config's test share of the calendar over the folds,
    val_days to test_days."""
    from .checkpoint import write_json
    from .dataset import load_data_candles
    from .evaluate.multi_horizon import check_options

    import pandas as pd

    cfg = load_config(config, list(overrides))
    horizons = tuple(sorted({int(h) for h in horizons}))
    if horizons:
        check_options(1, samples)
    out = writable_dir(out, "walk-forward directory (-o)")
    universe, candles = load_data_candles(cfg.data)
    if candles.empty:
        raise MarketGPTError(f"{config}: no cached candles for universe {cfg.data.universe}; run `marketgpt data "
                             f"download` first")
    dates = pd.DatetimeIndex(sorted(candles.date.unique()))
    if test_days is None:
        test_days = max(1, int(len(dates) * cfg.data.test_ratio) // max(1, int(folds)))
    val_days = test_days if val_days is None else val_days
    plan_list = plan_folds(dates, folds, test_days, val_days, embargo, mode, min_train=cfg.model.context_length + 2)
    settings = {"config": str(Path(config).resolve()), "overrides": list(overrides), "folds": folds,
                "test_days": test_days, "val_days": val_days, "mode": mode, "embargo_days": embargo,
                "horizons": list(horizons), "samples": samples}
    if seeds < 1:
        raise MarketGPTError(f"walk-forward: --seeds must be at least 1, got {seeds}")
    settings |= ({"warm_start": True} if warm_start else {}) | ({"seeds": int(seeds)} if seeds > 1 else {})
    path = out / PLAN
    if path.exists():
        old = read_json(path, "walk-forward plan")
        if old.get("settings") != settings:
            before = old.get("settings", {})
            changed = sorted(k for k in {*settings, *before} if before.get(k) != settings.get(k))
            raise MarketGPTError(f"{path}: holds another walk-forward ({', '.join(changed)} differ); give another -o")
        return out
    write_json(cfg.to_dict(), out / "config.json")
    write_json({"settings": settings, "folds": [dataclasses.asdict(f) | {"name": f.name} for f in plan_list]},
                      path)
    log(f"walk-forward plan: {len(plan_list)} folds ({mode}, {test_days} test days, {val_days} validation days, "
        f"embargo {embargo} days) in {out}")
    return out


def read_plan(out) -> tuple[dict, list[Fold], Config]:
    out = Path(out)
    plan = read_json(out / PLAN, "walk-forward plan")
    folds = [Fold(**{k: v for k, v in f.items() if k != "name"}) for f in plan["folds"]]
    cfg = from_dict(read_json(out / "config.json", "walk-forward config"), str(out / "config.json"))
    return plan, folds, cfg


def fold_status(fold_dir: Path) -> str:
    path = fold_dir / "fold.json"
    return read_json(path, "fold status").get("status", "pending") if path.exists() else "pending"


def set_fold_status(fold_dir: Path, status: str, **extra) -> None:
    from .checkpoint import write_json

    write_json({"status": status, **extra}, fold_dir / "fold.json")


def run_fold(out, index: int, log=print, device=None) -> Path:
    """Train (or resume), evaluate and forecast one fold of a planned walk-forward; a finished fold is left as it
    is. Returns the fold's run directory."""
    from .dataset import load_data_candles
    from .evaluate import evaluate_run
    from .wf_fold import train_fold
    from .wf_outputs import fold_tables

    out = Path(out)
    plan, folds, base = read_plan(out)
    if not 0 <= index < len(folds):
        raise MarketGPTError(f"{out}: fold {index} does not exist (the plan has folds 0 to {len(folds) - 1})")
    fold, settings = folds[index], plan["settings"]
    fold_dir = out / fold.name
    if fold_status(fold_dir) == "done":
        log(f"{fold.name}: done already")
        return fold_dir
    universe_csv = out / "universes" / f"{fold.name}.csv"
    cfg = fold_config(base, fold, universe_csv, settings["embargo_days"])
    if not universe_csv.exists():
        universe, candles = load_data_candles(dataclasses.replace(cfg.data, universe=base.data.universe))
        universe_csv.parent.mkdir(exist_ok=True)
        tmp = universe_csv.with_name(f".{universe_csv.name}.tmp")
        fold_universe(universe, candles, fold).to_csv(tmp, index=False)
        tmp.replace(universe_csv)
    log(f"{fold.name}: train {fold.train_start or 'start'}..{fold.train_end}, val ..{fold.val_end}, "
        f"test {fold.test_start}..{fold.test_end}")
    model_dir, record = train_fold(out, [f.name for f in folds], index, cfg, settings, log)
    horizons = tuple(settings["horizons"])   # the multi-horizon evaluation beside the one-step one, when asked for
    evaluate_run(model_dir, log=log, device=device, horizons=(1, *horizons) if horizons else None,
                 horizon_samples=settings["samples"])
    fold_tables(model_dir, settings["horizons"], settings["samples"], log=log, device=device, out_dir=fold_dir)
    results = read_json(model_dir / "test_results.json", "fold test results")
    set_fold_status(fold_dir, "done", test_loss=results.get("test_loss"), **record)
    return fold_dir


def walkforward(config, out, folds: int = 4, test_days: int | None = None, val_days: int | None = None,
                mode: str = "expanding", embargo: int = DEFAULT_EMBARGO, horizons=DEFAULT_HORIZONS,
                samples: int = 64, overrides=(), only_fold: int | None = None, log=print, device=None,
                warm_start: bool = False, seeds: int = 1) -> Path:
    """Plan (or resume) a walk-forward, run its folds one after another (or only `only_fold`), then stitch the
    out-of-sample tables and write the summary. Returns the walk-forward directory."""
    from .wf_outputs import stitch

    out = make_plan(config, out, folds, test_days, val_days, mode, embargo, horizons, samples, overrides, log,
                    warm_start, seeds)
    _, plan_folds_, _ = read_plan(out)
    for fold in plan_folds_ if only_fold is None else [plan_folds_[_check_index(only_fold, len(plan_folds_))]]:
        run_fold(out, fold.index, log, device)
    if only_fold is None:
        stitch(out, log)
    return out


def _check_index(index: int, n: int) -> int:
    if not 0 <= index < n:
        raise MarketGPTError(f"--fold {index}: the plan has folds 0 to {n - 1}")
    return index



# --- command line ---------------------------------------------------------------------------------------------

def default_out(config, overrides=()) -> Path:
    cfg = load_config(config, list(overrides))
    return Path(cfg.training.checkpoint_dir) / f"{cfg.name}_walkforward"


WF_OPTIONS = ("folds", "test_days", "val_days", "mode", "embargo", "horizons", "samples", "warm_start", "seeds")


def wf_kwargs(args) -> dict:
    """make_plan's keyword arguments from parsed options (`walkforward`'s, or `slurm --walkforward`'s, where an
    option not given is None)."""
    from .evaluate.multi_horizon import parse_horizons

    text = DEFAULT_HORIZON_TEXT if args.horizons is None else args.horizons
    given = {"folds": args.folds, "test_days": args.test_days, "val_days": args.val_days, "mode": args.mode,
             "embargo": args.embargo, "samples": args.samples, "warm_start": args.warm_start, "seeds": args.seeds}
    defaults = {"folds": 4, "mode": "expanding", "embargo": DEFAULT_EMBARGO, "samples": 64, "warm_start": False,
                "seeds": 1}
    return {**{k: defaults.get(k) if v is None else v for k, v in given.items()},
            "horizons": parse_horizons(text) if text not in ("", "1") else ()}


def cmd_walkforward(args) -> int:
    from .wf_outputs import stitch

    if args.stitch:
        if not args.output:
            raise MarketGPTError("--stitch needs -o WF_DIR (the walk-forward to stitch)")
        stitch(args.output)
        return 0
    if not args.config:
        raise MarketGPTError("walkforward: give a CONFIG (or --stitch -o WF_DIR)")
    out = args.output or default_out(args.config, args.set)
    walkforward(args.config, out, **wf_kwargs(args), overrides=args.set, only_fold=args.fold, device=args.device)
    return 0


def walkforward_options(p, slurm: bool = False) -> None:
    """The options that define a walk-forward, shared by `walkforward` and `slurm --walkforward` (where they have
    no default, so that one given without --walkforward is seen)."""
    from .config import POSITIVE, RANGES, bounded

    def default(value):
        return None if slurm else value

    p.add_argument("--folds", type=bounded(int, POSITIVE), default=default(4), help="number of folds K (default 4)")
    p.add_argument("--test-days", type=bounded(int, POSITIVE),
                   help="dates of the universe's calendar per test window (default: the config's test share over K)")
    p.add_argument("--val-days", type=bounded(int, POSITIVE),
                   help="validation dates just before each cut (default: --test-days)")
    p.add_argument("--mode", choices=MODES, default=default("expanding"),
                   help="expanding: train from the first date; sliding: a training window of fold 0's length")
    p.add_argument("--embargo", type=bounded(int, RANGES["data.embargo_days"]), default=default(DEFAULT_EMBARGO),
                   help=f"calendar days between the last training target and the validation window "
                        f"(default {DEFAULT_EMBARGO})")
    p.add_argument("--horizons", default=default(DEFAULT_HORIZON_TEXT),
                   help="horizon days of the sample-path forecasts beside the one-step density, e.g. 5,21 "
                        "(1: the one-step density only)")
    p.add_argument("--samples", type=bounded(int, POSITIVE), default=default(64),
                   help="paths per forecast (default 64)")
    p.add_argument("--warm-start", action="store_true",
                   help="fold f starts from fold f-1's best weights (its own tokenizer still fitted on its own past)")
    p.add_argument("--seeds", type=bounded(int, POSITIVE), default=default(1),
                   help="train S seeds per fold and score their ensemble (linear pool) as the fold (default 1)")


def add_commands(sub) -> None:
    p = sub.add_parser("walkforward", help="train and test K folds in time (embargo, per-fold tokenizer), stitch "
                                           "their out-of-sample forecasts and summarise skill per fold")
    p.add_argument("config", nargs="?", help="config JSON (its data section is the universe and the period)")
    walkforward_options(p)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value for every fold (repeatable)")
    p.add_argument("--fold", type=int, help="run only this fold (a job array task); stitch later with --stitch")
    p.add_argument("--stitch", action="store_true", help="only stitch the finished folds of -o WF_DIR and summarise")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N for evaluation and forecasts")
    p.add_argument("-o", "--output", help="walk-forward directory (default CHECKPOINT_DIR/<name>_walkforward)")
    p.set_defaults(func=cmd_walkforward)
