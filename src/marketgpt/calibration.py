"""Post-hoc calibration of the close head: one temperature T, fitted on the validation split, never on test.

The close head's probabilities become p^(1/T) renormalised (its logits divided by T): T > 1 widens an overconfident
density, T < 1 sharpens an underconfident one. T minimises the mean NLL of the val split's close tokens over
log T in [log 0.2, log 5] (scipy's bounded Brent). That is the same T as minimising the val NLL of the close
return's density: inside a bin the density is the bin's probability times a shape that does not depend on the
probabilities (density.py), so the two NLLs differ by a constant.

Where: at the end of training, before the test evaluation (training.calibrate, default on), and on demand with
`marketgpt evaluate RUN_DIR --calibrate` (runs trained before calibration existed). Stored as calibration.json in
the run directory (written atomically); run.load_run reads it into the model's close_temperature, so evaluation
(score_model), the forecaster's default sampling (generate.py) and everything built on them use one calibrated
model. A run without the file loads as it was trained (T = 1). An ensemble is the linear pool of its members,
each with its own calibration; fine-tunes fit their own.

Measured (bench/skill.py, 281 daily series of ../shared/data, 2.35M parameters, shared 2-core CPU): the val-fitted
T is 1.014 after 4 x 100 steps (0.957 after 3 x 60), and moves the test NLL skill vs GARCH-t by 2e-4 nats/day
(-0.0420 -> -0.0422) and the 80% coverage from 0.795 to 0.796. The per-category errors (80% coverage FX 0.93,
crypto 0.76, US stocks 0.74) cancel in one T, and a T per category flattens token probabilities rather than
widening the return density (crypto T 2.3: 50% coverage 0.50 -> 0.32): scale is a return-space lever.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .errors import MarketGPTError

CALIBRATION_FILE = "calibration.json"
BOUNDS = (0.2, 5.0)


def read_temperature(run_dir) -> float:
    """The close temperature of a run directory: calibration.json's T, or 1.0 without the file."""
    from .config import read_json

    path = Path(run_dir) / CALIBRATION_FILE
    if not path.exists():
        return 1.0
    raw = read_json(path, "calibration file")
    t = raw.get("close_temperature") if isinstance(raw, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise MarketGPTError(f"{path}: close_temperature must be a positive number, got {t!r}; refit it with "
                             f"`marketgpt evaluate {Path(run_dir)} --calibrate` or delete the file")
    return float(t)


def close_logits(model, store, windows, context_length: int, batch_size: int):
    """The close head's logits (n, V) float32 and the close tokens (n,) of every target of the windows."""
    import torch

    from .evaluate.scoring import model_batches

    logits, targets = [], []
    for _, _, lg, tg in model_batches(model, store, windows, context_length, batch_size):
        logits.append(lg[:, 0].cpu())
        targets.append(tg[:, 0].cpu())
    return torch.cat(logits), torch.cat(targets)


def token_nll(logits, targets, t: float) -> float:
    """Mean NLL (nats) of the targets under softmax(logits / t)."""
    import torch

    logp = torch.log_softmax(logits.double() / t, dim=-1)
    return float(-logp.gather(-1, targets.long().unsqueeze(-1)).mean())


def fit_temperature(logits, targets, bounds=BOUNDS) -> dict:
    """T minimising the mean NLL of `targets` under softmax(logits / T), by bounded Brent on log T."""
    from scipy.optimize import minimize_scalar

    if len(targets) == 0:
        raise MarketGPTError("calibration: no validation targets to fit the close temperature on")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda s: token_nll(logits, targets, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    t = math.exp(res.x)
    return {"close_temperature": t, "val_close_nll_before": token_nll(logits, targets, 1.0),
            "val_close_nll_after": token_nll(logits, targets, t), "n": int(len(targets)),
            "at_bound": bool(min(abs(res.x - lo), abs(res.x - hi)) < 1e-3), "bounds": list(bounds)}


def calibrate_run(run_dir, device=None, log=print) -> dict:
    """Fit the close temperature of a run directory on its val split (the raw model: an earlier calibration is
    ignored) and write calibration.json; returns what it wrote."""
    from .checkpoint import write_json
    from .dataset import make_windows
    from .run import check_run_dir, load_run, weights_file

    run_dir = check_run_dir(run_dir)
    if weights_file(run_dir) == "ensemble.json":
        raise MarketGPTError(f"{run_dir}: is an ensemble; calibrate its member runs (`marketgpt evaluate MEMBER "
                             f"--calibrate`): the ensemble pools the calibrated members")
    started = time.time()
    cfg, _, store, model, epoch = load_run(run_dir, device, calibrated=False)   # an old or corrupt file: replaced
    T = cfg.model.context_length
    logits, targets = close_logits(model, store, make_windows(store, "val", T), T, cfg.training.batch_size)
    fit = fit_temperature(logits, targets)
    out = {**fit, "split": "val", "best_epoch": epoch, "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rule": "close head probabilities p^(1/T) renormalised (logits / T); T minimises the val split's mean "
                   "close-token NLL over log T in the bounds (bounded Brent)"}
    write_json(out, run_dir / CALIBRATION_FILE)
    log(f"Calibrated the close head on val: T = {fit['close_temperature']:.3f} (close NLL "
        f"{fit['val_close_nll_before']:.4f} -> {fit['val_close_nll_after']:.4f} over {fit['n']} targets"
        f"{', at the bound' if fit['at_bound'] else ''}; {time.time() - started:.1f}s)")
    return out
