"""Training one walk-forward fold: one run, or `--seeds S` runs and their ensemble, cold or warm-started.

- Seeds: WF_DIR/fold_NN/seed_0 ... seed_{S-1} are ordinary run directories, seed s trained with training.seed + s.
  Seed 0 fits the fold's tokenizer on the fold's training period; the others keep it (Start(tokenizer=...)), so
  the seeds share one tokenizer byte for byte, as an ensemble needs. WF_DIR/fold_NN/ensemble is their ensemble
  (ensemble.create_ensemble: the linear pool of their one-step densities), and it is what the fold is scored with.
- Warm start (`--warm-start`): fold f starts from fold f-1's best weights (seed s from seed s), through
  run_files.Start: assets fold f-1 had keep their embedding rows, assets listed since start from its unknown-asset
  row (finetune.initial_state, as a fine-tune does). Fold f still fits its own tokenizer on its own training
  period (nothing after its cut reaches its bins), so the bins' edges move between folds while the weights were
  learnt on fold f-1's: token k is still the k-th quantile bin of its channel, a move of about the same size, but
  not exactly the same one. The weights load because the shapes agree (same model section, same vocab); a shape
  that differs is refused. fold.json, config.json's "run" block and walkforward.json record the fold started
  from, its best_model.pt's sha256 and whether the bins were the same.
"""

from __future__ import annotations

from pathlib import Path

from .config import Config, from_dict, read_json
from .errors import MarketGPTError

ENSEMBLE_DIR = "ensemble"


def seed_runs(fold_dir: Path, seeds: int) -> list[Path]:
    return [fold_dir] if seeds <= 1 else [fold_dir / f"seed_{s}" for s in range(seeds)]


def trained(run_dir: Path) -> bool:
    path = run_dir / "training_log.json"
    return path.exists() and bool(read_json(path, "training log").get("finished"))


def _seed_config(cfg: Config, s: int) -> Config:
    raw = cfg.to_dict()
    raw["name"] = f"{cfg.name}_seed{s}"
    raw["training"]["seed"] = cfg.training.seed + s
    return from_dict(raw, f"{cfg.name} seed {s}")


def warm_init(prev_run: Path):
    """(init, parent record) that start a run from prev_run's best weights."""
    from .checkpoint import load_checkpoint
    from .finetune import initial_state
    from .run import file_sha256, has_unknown_rows

    weights = prev_run / "best_model.pt"
    state = load_checkpoint(weights, map_location="cpu")["model"]
    info = read_json(prev_run / "asset_info.json", "asset info")
    if not has_unknown_rows(state, len(info["assets"])):
        info = {**info, "unknown": {"asset_id": None, "category_id": None}}

    def init(model, store) -> None:
        start = initial_state(state, info, store.symbols, store.category_names)
        own = model.state_dict()
        for key, value in own.items():
            if key not in start or start[key].shape != value.shape:
                got = tuple(start[key].shape) if key in start else "none"
                raise MarketGPTError(f"--warm-start: {weights} has {key} of shape {got}, this fold's model "
                                     f"{tuple(value.shape)}; the folds' model sections must agree")
        model.load_state_dict(start)

    return init, {"run_dir": str(prev_run.resolve()), "best_model_sha256": file_sha256(weights)}


def train_fold(out: Path, fold_names: list[str], index: int, cfg: Config, settings: dict, log=print) -> tuple[Path, dict]:
    """Train (or resume) the fold's run(s); returns (the directory the fold is scored with, what fold.json records
    about its start)."""
    from .ensemble import ENSEMBLE_FILE, create_ensemble
    from .run_files import Start
    from .tokenizer import CandleTokenizer
    from .train import train
    from .walkforward import fold_status

    seeds = int(settings.get("seeds", 1))
    fold_dir = out / fold_names[index]
    runs = seed_runs(fold_dir, seeds)
    record: dict = {}
    prev = None
    if settings.get("warm_start") and index > 0:
        prev_dir = out / fold_names[index - 1]
        if fold_status(prev_dir) != "done":
            raise MarketGPTError(f"--warm-start: {fold_names[index - 1]} is not done, and {fold_names[index]} starts "
                                 f"from its weights; run the folds in order")
        prev = seed_runs(prev_dir, seeds)
        record["warm_start_from"] = fold_names[index - 1]
    for s, run_dir in enumerate(runs):
        if trained(run_dir):
            continue
        start = Start()
        if s:
            start.tokenizer = CandleTokenizer.load(runs[0] / "tokenizer.json")
        if prev is not None:
            start.init, start.parent = warm_init(prev[s])
            start.parent["warm_start_from"] = record["warm_start_from"]
        train(cfg if seeds <= 1 else _seed_config(cfg, s), run_dir=run_dir, log=log, start=start)
    if prev is not None:
        record["same_bins"] = (prev[0] / "tokenizer.json").read_bytes() == (runs[0] / "tokenizer.json").read_bytes()
    if seeds <= 1:
        return fold_dir, record
    model_dir = fold_dir / ENSEMBLE_DIR
    if not (model_dir / ENSEMBLE_FILE).exists():
        import shutil

        shutil.rmtree(model_dir, ignore_errors=True)       # an ensemble cut short is built again
        create_ensemble(runs, model_dir, log=log)
    record["seeds"] = [r.name for r in runs]
    record["ensemble"] = ENSEMBLE_DIR
    return model_dir, record
