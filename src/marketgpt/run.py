"""Reading a run directory: its config, tokenizer, token store and best weights.

The trainer writes run directories and everything downstream (evaluation, forecasting) reads them through this
module, so no later stage imports the trainer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .config import Config, from_dict, read_json
from .errors import MarketGPTError


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (a checkpoint can be large): how a run names weights it used."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_run_config(run_dir: Path) -> Config:
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise MarketGPTError(f"{run_dir}: run directory not found")
    if not path.exists():
        raise MarketGPTError(f"{run_dir}: not a run directory (no config.json)")
    return from_dict(read_json(path, "run config"), str(path))


def weights_file(run_dir: Path) -> str:
    """What holds a run directory's weights: best_model.pt, or ensemble.json naming its members' (ensemble.py)."""
    return "ensemble.json" if (run_dir / "ensemble.json").exists() else "best_model.pt"


def check_run_dir(run_dir) -> Path:
    if not isinstance(run_dir, (str, Path)) or not str(run_dir).strip():
        raise MarketGPTError(f"run directory: expected a path, got {type(run_dir).__name__} {run_dir!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MarketGPTError(f"{run_dir}: " + ("a file, not a run directory" if run_dir.exists() else
                                               "run directory not found"))
    for name in ("config.json", "tokenizer.json", weights_file(run_dir)):
        if not (run_dir / name).exists():
            raise MarketGPTError(f"{run_dir}: no {name} (not a finished run directory?)")
    if not (run_dir / "tokens" / "assets.json").exists():
        raise MarketGPTError(f"{run_dir}: no token store (tokens/)")
    return run_dir


def has_unknown_rows(state_dict: dict, num_assets: int) -> bool:
    """Whether a checkpoint's asset table has the extra "unknown asset" row (runs trained before it have none)."""
    weight = state_dict.get("asset_emb.weight")
    return weight is not None and weight.shape[0] == num_assets + 1


def weights_misfit(model, state: dict) -> list[str]:
    """Every difference between a checkpoint's weights and a model built from the run's files: keys missing,
    unexpected, or of another shape (checkpoint vs run), all of them, so nothing of the cause is cut off."""
    own = model.state_dict()
    shape = lambda t: "x".join(map(str, t.shape)) if hasattr(t, "shape") else type(t).__name__
    lines = [f"{k} {shape(state[k])} vs {shape(own[k])}" for k in own if k in state and
             getattr(state[k], "shape", None) != own[k].shape]
    lines += [f"{k} missing" for k in own if k not in state]
    lines += [f"{k} unexpected" for k in state if k not in own]
    return lines


def check_weights_fit(run_dir: Path, model, state: dict, tokenizer, store) -> None:
    """best_model.pt fits the model its run's files describe, or one line naming the file that disagrees: the
    token store (tokens/assets.json: assets and categories; tokens.npy: channels) or tokenizer.json when their
    tables differ from the weights' (a store copied from another run), else config.json's model section."""
    if store.tokens.shape[1] != len(tokenizer.channels):
        raise MarketGPTError(f"{run_dir}: tokens/tokens.npy has {store.tokens.shape[1]} channels but tokenizer.json "
                             f"{len(tokenizer.channels)} ({', '.join(tokenizer.channels)}): the token store and the "
                             f"tokenizer come from different runs")
    misfit = weights_misfit(model, state)
    if not misfit:
        return
    files = {"asset_emb.weight": "tokens/assets.json", "category_emb.weight": "tokens/assets.json",
             "tok_emb.weight": "tokens/tokens.npy", "cond_emb.weight": "tokens/tokens.npy", "head": "tokens/tokens.npy"}
    own = model.state_dict()
    rows_only = [k for k in files if k in state and k in own and getattr(state[k], "shape", None) != own[k].shape
                 and tuple(state[k].shape[-2 if k == "head" else 1:]) == tuple(own[k].shape[-2 if k == "head" else 1:])]
    if rows_only and len(rows_only) == len(misfit):
        culprit = (" and ".join(dict.fromkeys(files[k] for k in rows_only)) + f" of {run_dir} ({len(store.symbols)} "
                   f"assets, {len(store.category_names)} categories, {store.tokens.shape[1]} channels): the token "
                   f"store is not the one these weights were trained on")
    else:
        culprit = f"the model section of {run_dir / 'config.json'}"
    raise MarketGPTError(f"{run_dir / 'best_model.pt'}: the weights do not fit {culprit} "
                         f"(checkpoint vs run: {'; '.join(misfit)})")


def load_run(run_dir, device=None, calibrated: bool = True):
    """(config, tokenizer, token store, model in eval mode on `device`, best checkpoint's epoch). For an ensemble
    directory the model is an ensemble.Ensemble of its members (epoch None): the one place that tells them apart.
    The model carries the run's close temperature and width from calibration.json (calibration.py), if it has one and
    `calibrated`; calibrated=False: the model as trained (what a calibration is fitted to), the file not read."""
    import torch

    from .calibration import read_calibration, width_tensor
    from .checkpoint import load_checkpoint
    from .dataset import TokenStore
    from .density import close_density
    from .model import MarketGPT
    from .tokenizer import CandleTokenizer

    run_dir = check_run_dir(run_dir)
    cfg = read_run_config(run_dir)
    tokenizer = CandleTokenizer.load(run_dir / "tokenizer.json")
    store = TokenStore.load(run_dir / "tokens")
    try:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise MarketGPTError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if (run_dir / "ensemble.json").exists():
        from .ensemble import load_ensemble

        return cfg, tokenizer, store, load_ensemble(run_dir, device), None
    ckpt = load_checkpoint(run_dir / "best_model.pt")
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise MarketGPTError(f"{run_dir / 'best_model.pt'}: not a model checkpoint (no 'model' weights)")
    model = MarketGPT(cfg.model, store.tokens.shape[1], len(store.symbols), len(store.category_names),
                      unknown=has_unknown_rows(state, len(store.symbols)))
    check_weights_fit(run_dir, model, state, tokenizer, store)
    model.load_state_dict(state)
    model.to(device).eval()
    if calibrated:   # T = 1 and no width without calibration.json
        model.close_temperature, width = read_calibration(run_dir)
        widths = width_tensor(width, close_density(tokenizer), store.category_names, model.unknown_category is not None)
        model.close_width = None if widths is None else widths.to(device)
    return cfg, tokenizer, store, model, ckpt.get("epoch")
