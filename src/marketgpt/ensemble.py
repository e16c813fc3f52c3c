"""Ensembles of runs that share a tokenizer: one directory that acts like a run directory.

`create_ensemble(run_dirs, out_dir)` (CLI: `marketgpt ensemble RUN_DIR... -o ENS_DIR`) writes ENS_DIR with
`ensemble.json` (the members' paths, the sha256 of each member's best_model.pt, the creation time) and the first
member's config.json, tokenizer.json, data_info.json and token store, so every stage that reads a run directory
(evaluate, forecast, signals, backtest) reads an ensemble directory too: `run.load_run` hands them an `ensemble_model.Ensemble`
in place of a model, and that is the only place that knows.

- One-step density: the mean of the members' probabilities (a linear pool). For the close channel (predicted from
  the context alone) that is the mean of the members' close probabilities; by the concavity of log its log score is
  never worse than the members' mean log score. The later channels of the candle are the pool's exact conditionals:
  each member weighted by its probability of the channels before (the one-step joint is the mixture of the members'
  joints).
- Sampling: each path is drawn whole from one member. Path slots are dealt to members by a permutation seeded by
  (seed, the prompt's key), the same share for every member (num_samples // M, the first ones one more), so the
  multi-horizon quantiles and P(up) are those of the equal-weight mixture and a forecast is as reproducible as a
  single run's.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from .config import read_json, writable_dir
from .errors import MarketGPTError
from .run import file_sha256

ENSEMBLE_FILE = "ensemble.json"
COPIED = ("config.json", "tokenizer.json", "data_info.json")


def _member_info(run_dir) -> dict:
    """What members must share, read from a finished run directory (refusing an ensemble as a member)."""
    from .run import check_run_dir, read_run_config

    run_dir = check_run_dir(run_dir)
    if (run_dir / ENSEMBLE_FILE).exists():
        raise MarketGPTError(f"{run_dir}: is an ensemble; list its member runs instead")
    cfg = read_run_config(run_dir)
    return {"dir": run_dir, "tokenizer": (run_dir / "tokenizer.json").read_bytes(),
            "vocab_size": cfg.model.vocab_size, "context_length": cfg.model.context_length,
            "assets": read_json(run_dir / "tokens" / "assets.json", "token store assets")}


def _check_compatible(infos) -> None:
    first = infos[0]
    for info in infos[1:]:
        if info["tokenizer"] != first["tokenizer"]:
            raise MarketGPTError(f"{info['dir']}: its tokenizer.json differs from {first['dir']}'s; "
                                 f"an ensemble's runs must share one tokenizer")
        for key, what in (("vocab_size", "model.vocab_size"), ("context_length", "model.context_length"),
                          ("assets", "asset list (tokens/assets.json)")):
            if info[key] != first[key]:
                raise MarketGPTError(f"{info['dir']}: its {what} differs from {first['dir']}'s")


def create_ensemble(run_dirs, out_dir, log=print) -> Path:
    """Write the ensemble directory out_dir from >= 2 finished runs that share a tokenizer (see the module
    docstring); returns out_dir. The members' weights are loaded once here, so a bad checkpoint fails now."""
    from .checkpoint import write_json
    from .run import load_run

    resolved = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    if len(resolved) < 2:
        raise MarketGPTError(f"an ensemble needs at least 2 different run directories, got {len(resolved)}")
    infos = [_member_info(d) for d in resolved]
    _check_compatible(infos)
    members = [load_run(d, "cpu")[3] for d in resolved]
    if len({m.unknown_asset is None for m in members}) > 1:
        raise MarketGPTError(f"{resolved[[m.unknown_asset is None for m in members].index(True)]}: has no "
                             f"unknown-asset embedding and the others have one; retrain it or leave it out")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise MarketGPTError(f"{out}: exists and is not empty; choose a new ensemble directory")
    writable_dir(out, "ensemble")
    first = resolved[0]
    for name in COPIED:
        if (first / name).exists():
            shutil.copy2(first / name, out / name)
    shutil.copytree(first / "tokens", out / "tokens")
    write_json({"members": [{"path": str(d), "best_model_sha256": file_sha256(d / "best_model.pt")}
                            for d in resolved],
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pool": "linear: mean of the members' probabilities; each sample path from one member"},
               out / ENSEMBLE_FILE)
    log(f"wrote the ensemble of {len(resolved)} runs to {out}")
    return out


def load_ensemble(ens_dir, device=None):
    """The members of an ensemble directory as one Ensemble in eval mode; a member whose best_model.pt changed
    since the ensemble was built is refused (its hash no longer matches)."""
    from .ensemble_model import Ensemble
    from .run import load_run

    ens_dir = Path(ens_dir)
    spec = read_json(ens_dir / ENSEMBLE_FILE, "ensemble file")
    try:
        entries = [(Path(e["path"]), e["best_model_sha256"]) for e in spec["members"]]
    except (KeyError, TypeError):
        raise MarketGPTError(f"{ens_dir / ENSEMBLE_FILE}: not an ensemble file (members with path and "
                             f"best_model_sha256 expected)") from None
    infos = [_member_info(path) for path, _ in entries]
    _check_compatible(infos)
    if infos[0]["tokenizer"] != (ens_dir / "tokenizer.json").read_bytes():
        raise MarketGPTError(f"{ens_dir / 'tokenizer.json'}: differs from its members' tokenizer")
    for path, digest in entries:
        if file_sha256(path / "best_model.pt") != digest:
            raise MarketGPTError(f"{path / 'best_model.pt'}: changed since the ensemble {ens_dir} was built; "
                                 f"build it again")
    return Ensemble([load_run(path, device)[3] for path, _ in entries], [path.name for path, _ in entries]).eval()


def member_table(ensemble, pooled: dict, rescore, log=print) -> dict:
    """NLL, CRPS and 50%/80% coverage of the close return for the ensemble and each member on the same scored rows.
    pooled: score_model's output for the ensemble; rescore(member) gives a member's."""
    from . import metrics as M

    def row(scores):
        return {"nll": float(np.mean(scores["ret_nll"])), "crps": float(np.mean(scores["ret_crps"])),
                "coverage_50": M.coverage(scores["pit"], 0.5), "coverage_80": M.coverage(scores["pit"], 0.8)}

    rows = {"ensemble": row(pooled)}
    for name, member in zip(ensemble.names, ensemble.members):
        scores = rescore(member)
        if not np.array_equal(scores["row"], pooled["row"]):
            raise RuntimeError("a member was scored on other rows than the ensemble")
        rows[name] = row(scores)
    members = [rows[n] for n in ensemble.names]
    rows["members' mean"] = {k: float(np.mean([r[k] for r in members])) for k in rows["ensemble"]}
    table = {"n": int(len(pooled["row"])), "rows": rows}
    log(format_members(table))
    return table


def format_members(table: dict) -> str:
    """The member table as markdown (also what evaluate prints)."""
    from .evaluate.report import markdown_table

    return markdown_table(["model", "NLL", "CRPS", "cover 50%", "cover 80%"],
                          [[name, f"{r['nll']:.4f}", f"{r['crps']:.6f}", f"{100 * r['coverage_50']:.1f}%",
                            f"{100 * r['coverage_80']:.1f}%"] for name, r in table["rows"].items()])


def cmd_ensemble(args) -> int:
    create_ensemble(args.run_dirs, args.out)
    return 0


def add_commands(sub) -> None:
    """Register `marketgpt ensemble` on the `marketgpt` parser."""
    ens = sub.add_parser("ensemble", help="combine finished runs that share a tokenizer into an ensemble directory "
                                          "(linear pool of their densities) usable wherever a run directory is")
    ens.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories (at least 2)")
    ens.add_argument("-o", "--out", required=True, metavar="ENS_DIR", help="the new ensemble directory")
    ens.set_defaults(func=cmd_ensemble)
