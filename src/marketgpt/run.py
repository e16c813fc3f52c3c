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
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MarketGPTError(f"{run_dir}: run directory not found")
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


def load_run(run_dir, device=None, calibrated: bool = True):
    """(config, tokenizer, token store, model in eval mode on `device`, best checkpoint's epoch). For an ensemble
    directory the model is an ensemble.Ensemble of its members (epoch None): the one place that tells them apart.
    The model carries the run's close temperature from calibration.json (calibration.py), if it has one and
    `calibrated`; calibrated=False: the model as trained (what a calibration is fitted to), the file not read."""
    import torch

    from .calibration import read_temperature
    from .checkpoint import load_checkpoint
    from .dataset import TokenStore
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
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise MarketGPTError(f"{run_dir / 'best_model.pt'}: weights do not fit the run's config.json model section "
                             f"({detail[:400]})") from None
    model.to(device).eval()
    model.close_temperature = read_temperature(run_dir) if calibrated else 1.0   # 1.0 without calibration.json
    return cfg, tokenizer, store, model, ckpt.get("epoch")
