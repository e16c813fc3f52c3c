"""Post-hoc calibration of the close head, fitted on the validation split, never on test: a temperature T, then a
width per category.

**Temperature.** The close head's probabilities become p^(1/T) renormalised (its logits divided by T): T > 1 flattens
an overconfident density, T < 1 sharpens an underconfident one. T minimises the mean NLL of the val split's close
tokens over log T in [log 0.2, log 5] (scipy's bounded Brent). That is the same T as minimising the val NLL of the
close return's density: inside a bin the density is the bin's probability times a shape that does not depend on the
probabilities (density.py), so the two NLLs differ by a constant.

**Width.** A temperature reshapes probabilities over bins; it does not widen the return density (a T per category:
crypto T 2.3, 50% coverage 0.50 -> 0.32). A width c stretches the tempered density about 0 and reads it back on the
same bins (width_map, a V x V matrix: probs @ width_map(c)), so the quantiles move by c and the tokens, sampling and
decoding stay the tokenizer's. Each category with >= MIN_CATEGORY_TARGETS val targets gets its own c, the others and
categories the run never saw the c of all val targets, each by bounded Brent on log c in [log 0.5, log 2] at the
fitted T. Widths are in-sample on val, so before they are kept they must pass check_widths: fitted on the val days
before the middle val date, they must lower the NLL of the days after, significantly (a one-sided Diebold-Mariano
test on the date means at 5%); a run whose widths fail it has none.

Where: at the end of training, before the test evaluation (training.calibrate, default on), and on demand with
`marketgpt evaluate RUN_DIR --calibrate` (runs trained before calibration existed). Stored as calibration.json in
the run directory (written atomically); run.load_run reads it into the model's close_temperature and close_width, so
evaluation (score_model), the forecaster's default sampling (generate.py) and everything built on them use one
calibrated model. A run without the file loads as it was trained (T = 1), one calibrated before widths existed with
its T alone. An ensemble is the linear pool of its members, each with its own calibration; fine-tunes fit their own.

Measured (bench/skill.py, 281 daily series of ../shared/data, 2.35M parameters, 2-core CPU): see its docstring.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .density import close_density
from .errors import MarketGPTError

CALIBRATION_FILE = "calibration.json"
BOUNDS = (0.2, 5.0)
WIDTH_BOUNDS = (0.5, 2.0)
#: a category may get a width of its own from at least this many val targets (and only if check_widths keeps it); the
#: others, and categories the run never saw, take the default width fitted on all val targets
MIN_CATEGORY_TARGETS = 1000


def _positive(value, path, field: str, run_dir) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MarketGPTError(f"{path}: {field} must be a positive number, got {value!r}; refit it with "
                             f"`marketgpt evaluate {Path(run_dir)} --calibrate` or delete the file")
    return float(value)


def read_calibration(run_dir) -> tuple[float, dict | None]:
    """A run directory's calibration.json: (close temperature T, close width or None); (1.0, None) without the file.
    The width is {"default": c, "per_category": {category: c}} (fit_widths)."""
    from .config import read_json

    path = Path(run_dir) / CALIBRATION_FILE
    if not path.exists():
        return 1.0, None
    raw = read_json(path, "calibration file")
    t = _positive(raw.get("close_temperature") if isinstance(raw, dict) else None, path, "close_temperature", run_dir)
    width = raw.get("close_width")
    if width is None:
        return t, None
    per = width.get("per_category") if isinstance(width, dict) else None
    if not isinstance(per, dict):
        raise MarketGPTError(f"{path}: close_width must be an object with 'default' and 'per_category' (an object of "
                             f"category: width), got {width!r}; refit it with `marketgpt evaluate {Path(run_dir)} "
                             f"--calibrate` or delete the file")
    return t, {"default": _positive(width.get("default"), path, "close_width.default", run_dir),
               "per_category": {str(k): _positive(v, path, f"close_width.per_category.{k}", run_dir)
                                for k, v in per.items()}}


def close_logits(model, store, windows, context_length: int, batch_size: int):
    """The close head's logits (n, V) float32, the close tokens (n,) and the store rows (n,) of every target of the
    windows."""
    import numpy as np
    import torch

    from .evaluate.scoring import model_batches

    logits, targets, rows = [], [], []
    for w, mask, lg, tg in model_batches(model, store, windows, context_length, batch_size):
        logits.append(lg[:, 0].cpu())
        targets.append(tg[:, 0].cpu())
        rows.append((w[:, :1] + np.arange(1, context_length + 1))[mask])
    return torch.cat(logits), torch.cat(targets), np.concatenate(rows)


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


def width_map(density, c: float):
    """(V, V) float64, rows summing to 1: row i spreads bin i's piece of the close density (uniform over the bin, an
    exponential tail in the outer bins: density.py), stretched by c about 0, over the same bins. probs @ width_map is
    the close density widened by c (c < 1 narrower), read back on the tokenizer's bins; c = 1 is the identity."""
    import numpy as np

    edges = np.asarray(density.edges[1:-1], dtype=np.float64)     # the V - 1 finite edges
    V = edges.size + 1
    s_lo, s_hi = density.tail_scale
    lo, hi = c * edges[:-1, None], c * edges[1:, None]             # inner pieces 1..V-2, stretched (edges increase)
    cdf = np.empty((V, V - 1))                                      # cdf[i, k]: piece i's mass below edge k
    cdf[1:-1] = np.clip((edges - lo) / (hi - lo), 0.0, 1.0)
    cdf[0] = np.exp((np.minimum(edges, c * edges[0]) - c * edges[0]) / (c * s_lo))
    cdf[-1] = -np.expm1(-(np.maximum(edges, c * edges[-1]) - c * edges[-1]) / (c * s_hi))
    return np.diff(np.concatenate([np.zeros((V, 1)), cdf, np.ones((V, 1))], axis=1), axis=1)


def widened_nlls(logits, targets, t: float, matrix):
    """NLL (nats, (n,) float64) of each target under softmax(logits / t) @ matrix (a width_map)."""
    import torch

    probs = torch.softmax(logits.double() / t, dim=-1)
    columns = torch.as_tensor(matrix, dtype=torch.float64)[:, targets.long()].T       # (n, V): M[v, target]
    return -torch.log((probs * columns).sum(-1).clamp_min(1e-300))


def widened_nll(logits, targets, t: float, matrix) -> float:
    """Mean NLL (nats) of the targets under softmax(logits / t) @ matrix (a width_map)."""
    return float(widened_nlls(logits, targets, t, matrix).mean())


def fit_width(logits, targets, t: float, density, bounds=WIDTH_BOUNDS) -> float:
    """The width c minimising the mean NLL of `targets` under softmax(logits / t) @ width_map(c), by bounded Brent
    on log c."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda s: widened_nll(logits, targets, t, width_map(density, math.exp(s))),
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded", options={"xatol": 1e-3})
    return math.exp(res.x)


def fit_widths(logits, targets, categories, category_names, t: float, density,
               min_targets: int = MIN_CATEGORY_TARGETS, only=None) -> dict:
    """The close width of every category with at least min_targets val targets (and in `only`, if given), fitted on
    its targets alone, and a default fitted on all of them (the other categories and unseen ones)."""
    import torch

    categories = torch.as_tensor(categories)
    default = fit_width(logits, targets, t, density)
    per, counts = {}, {}
    for k, name in enumerate(category_names):
        rows = categories == k
        counts[name] = int(rows.sum())
        if counts[name] >= min_targets and (only is None or name in only):
            per[name] = fit_width(logits[rows], targets[rows], t, density)
    return {"default": default, "per_category": per, "targets": counts, "min_targets": min_targets,
            "bounds": list(WIDTH_BOUNDS)}


def category_widths(width: dict, category_names) -> list[float]:
    """The width of each category id: its own, or the default."""
    return [width["per_category"].get(name, width["default"]) for name in category_names]


def width_tensor(width: dict | None, density, category_names, unknown: bool):
    """The model's close_width (K, V, V) float32 for category ids 0..K-1 (K = the run's categories, plus the unknown
    one), or None where every width is 1 (no width, or a run calibrated before widths existed)."""
    import numpy as np
    import torch

    if width is None:
        return None
    cs = category_widths(width, category_names) + [width["default"]] * unknown
    if all(c == 1.0 for c in cs):
        return None
    maps = {c: width_map(density, c) for c in set(cs)}
    return torch.from_numpy(np.stack([maps[c] for c in cs])).float()


def calibrated_nlls(logits, targets, categories, t: float, widths, density):
    """NLL ((n,) float64) of each target after the temperature and the width of its category (widths[category id])."""
    import torch

    categories = torch.as_tensor(categories)
    out = torch.empty(len(targets), dtype=torch.float64)
    for k in torch.unique(categories).tolist():
        rows = categories == k
        out[rows] = widened_nlls(logits[rows], targets[rows], t, width_map(density, widths[k]))
    return out


def calibrated_nll(logits, targets, categories, t: float, widths, density) -> float:
    """Mean NLL of the targets after the temperature and the width of their category (widths[category id])."""
    return float(calibrated_nlls(logits, targets, categories, t, widths, density).mean())


#: a width is kept when its mean NLL gain on the later val days is > 0 and its Diebold-Mariano statistic (on the date
#: means, as evaluation's) below -CHECK_Z: one-sided 5%. A gain that is noise (4.7e-5 nats/day on a small run) keeps
#: none; so does a loss per target that the date means (weekends: crypto alone) would turn into a gain.
CHECK_Z = 1.645


def _gain(before, after, dates) -> tuple[float, float]:
    """(mean NLL gain per target, DM statistic of after - before on the date means) of two per-target NLLs."""
    from .metrics import date_mean_diebold_mariano

    d = (after - before).numpy()
    return float(-d.mean()), date_mean_diebold_mariano(d, dates).statistic


def check_widths(logits, targets, categories, dates, category_names, t: float, density,
                 min_targets: int = MIN_CATEGORY_TARGETS) -> dict:
    """Which widths help out of sample? Fitted (fit_widths, min_targets halved) on the val targets dated before the
    middle val date, scored on the others: the default width is kept if it beats none (c = 1) there, a category's own
    width if it beats what the category would get otherwise (the kept default, or none) on its later targets, each
    by a DM statistic below -CHECK_Z. Why: on 764 val days, crypto's own width (0.77) cost 0.049 nats/day on the next
    819 (bench/skill.py, lambda 0.97)."""
    import numpy as np
    import torch

    categories = torch.as_tensor(categories)
    days = np.unique(dates)
    cut = days[len(days) // 2]
    early, late = torch.as_tensor(dates < cut), torch.as_tensor(dates >= cut)
    out = {"split_date": str(cut), "targets_after": int(late.sum()), "default_kept": False, "own": [], "nll_gain": None,
           "kept": False, "z": CHECK_Z}
    if not early.any() or not late.any():
        return out
    fit = fit_widths(logits[early], targets[early], categories[early], category_names, t, density, min_targets // 2)
    lg, tg, cat, day = logits[late], targets[late], categories[late], dates[late.numpy()]
    K = len(category_names)
    none = calibrated_nlls(lg, tg, cat, t, [1.0] * K, density)
    default_gain, default_stat = _gain(none, calibrated_nlls(lg, tg, cat, t, [fit["default"]] * K, density), day)
    default_kept = default_gain > 0 and default_stat < -CHECK_Z
    base = fit["default"] if default_kept else 1.0
    gains = {}
    for name, c in fit["per_category"].items():
        rows = cat == category_names.index(name)
        if rows.sum() > 1:
            mine = widened_nlls(lg[rows], tg[rows], t, width_map(density, c))
            theirs = widened_nlls(lg[rows], tg[rows], t, width_map(density, base))
            gains[name] = dict(zip(("nll_gain", "dm_statistic"), _gain(theirs, mine, day[rows.numpy()])))
    own = sorted(n for n, g in gains.items() if g["nll_gain"] > 0 and g["dm_statistic"] < -CHECK_Z)
    chosen = [fit["per_category"][n] if n in own else base for n in category_names]
    gain = float((none - calibrated_nlls(lg, tg, cat, t, chosen, density)).mean())
    return {**out, "fitted_before": fit, "default_gain": default_gain, "default_dm_statistic": default_stat,
            "default_kept": default_kept, "category_gain": gains, "own": own, "nll_gain": gain,
            "kept": default_kept or bool(own)}


def calibrate_run(run_dir, device=None, log=print) -> dict:
    """Fit the close temperature of a run directory on its val split (the raw model: an earlier calibration is
    ignored) and write calibration.json; returns what it wrote."""
    import numpy as np

    from .checkpoint import write_json
    from .dataset import make_windows
    from .run import check_run_dir, load_run, weights_file

    run_dir = check_run_dir(run_dir)
    if weights_file(run_dir) == "ensemble.json":
        raise MarketGPTError(f"{run_dir}: is an ensemble; calibrate its member runs (`marketgpt evaluate MEMBER "
                             f"--calibrate`): the ensemble pools the calibrated members")
    started = time.time()
    # the raw model: an old or corrupt calibration file is replaced
    cfg, tokenizer, store, model, epoch = load_run(run_dir, device, calibrated=False)
    T = cfg.model.context_length
    logits, targets, rows = close_logits(model, store, make_windows(store, "val", T), T, cfg.training.batch_size)
    categories = np.asarray(store.category_ids)[np.asarray(store.asset)[rows]]
    fit = fit_temperature(logits, targets)
    t = fit["close_temperature"]
    density = close_density(tokenizer)
    check = check_widths(logits, targets, categories, np.asarray(store.dates)[rows], store.category_names, t, density)
    width = None
    if check["kept"]:
        width = fit_widths(logits, targets, categories, store.category_names, t, density, only=set(check["own"]))
        width["default"] = width["default"] if check["default_kept"] else 1.0
        width["val_close_nll_after"] = calibrated_nll(logits, targets, categories, t,
                                                      category_widths(width, store.category_names), density)
    out = {**fit, "close_width": width, "width_check": check, "split": "val", "best_epoch": epoch,
           "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "rule": "close head probabilities p^(1/T) renormalised (logits / T), then widened by the row's category's "
                   "width c (width_map: each bin's piece stretched by c about 0 and read back on the bins); T "
                   "minimises the val split's mean close-token NLL over log T in the bounds, then each category's c "
                   "(or the default's, from all val targets) the NLL of its targets at that T, over log c (bounded "
                   "Brent); the default and each category's own width only where, fitted on the val days before the "
                   "middle val date, they lower the NLL of the days after, DM statistic below -1.645 (width_check)"}
    write_json(out, run_dir / CALIBRATION_FILE)
    if width:
        widths = ", ".join(f"{k} {v:.3f}" for k, v in width["per_category"].items())
        widened = (f"width {width['default']:.3f}{f' ({widths})' if widths else ''}, close NLL -> "
                   f"{width['val_close_nll_after']:.4f}")
    else:
        widened = "no width"
    gain = check["nll_gain"]
    log(f"Calibrated the close head on val: T = {t:.3f} (close NLL {fit['val_close_nll_before']:.4f} -> "
        f"{fit['val_close_nll_after']:.4f} over {fit['n']} targets{', at the bound' if fit['at_bound'] else ''}); "
        f"{widened} (widths fitted before {check['split_date']} "
        f"{'n/a' if gain is None else f'{gain:+.4f}'} nats on the val days after; {time.time() - started:.1f}s)")
    return out
