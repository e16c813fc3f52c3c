"""Formatting of a results dict: the headline, the Markdown report and the compare table. Every number shown comes
from the results dict through the column specs below."""

from __future__ import annotations

import math
from pathlib import Path

from .scoring import BASELINES, PIT_BINS, results_name


def get_path(block: dict, path):
    for key in path:
        if block is None:
            return None
        block = block.get(key) if isinstance(block, dict) else block[int(key)]   # results of older versions lack keys
    return block


def format_value(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, fmt)


#: (header, path inside a close-return block, format) of the report's return tables


NLL_COLUMNS = [
    ("n", ("n",), "d"),
    ("model", ("model", "nll"), ".4f"),
    ("RW", ("random_walk", "nll"), ".4f"),
    ("GARCH-t", ("garch_t", "nll"), ".4f"),
    ("skill vs RW", ("skill", "nll_vs_random_walk"), "+.4f"),
    ("skill vs GARCH-t", ("skill", "nll_vs_garch_t"), "+.4f"),
    ("DM vs RW", ("dm", "vs_random_walk", "statistic"), "+.2f"),
    ("p (RW)", ("dm", "vs_random_walk", "p_value"), ".3g"),
    ("DM vs GARCH-t", ("dm", "vs_garch_t", "statistic"), "+.2f"),
    ("p (GARCH-t)", ("dm", "vs_garch_t", "p_value"), ".3g"),
    ("pooled DM vs GARCH-t", ("dm_pooled", "vs_garch_t", "statistic"), "+.2f"),
    ("pooled p", ("dm_pooled", "vs_garch_t", "p_value"), ".3g"),
    ("GARCH-t exp.", ("garch_t_expanding", "nll"), ".4f"),
    ("skill vs GARCH-t exp.", ("skill", "nll_vs_garch_t_expanding"), "+.4f"),
    ("p (GARCH-t exp.)", ("dm", "vs_garch_t_expanding", "p_value"), ".3g"),
]


CRPS_COLUMNS = [
    ("model", ("model", "crps"), ".6f"),
    ("RW", ("random_walk", "crps"), ".6f"),
    ("GARCH-t", ("garch_t", "crps"), ".6f"),
    ("skill vs RW", ("skill", "crps_vs_random_walk"), "+.4f"),
    ("skill vs GARCH-t", ("skill", "crps_vs_garch_t"), "+.4f"),
    ("GARCH-t exp.", ("garch_t_expanding", "crps"), ".6f"),
    ("skill vs GARCH-t exp.", ("skill", "crps_vs_garch_t_expanding"), "+.4f"),
]


CALIBRATION_COLUMNS = [
    ("cov80 model", ("model", "coverage_80"), ".4f"),
    ("cov80 RW", ("random_walk", "coverage_80"), ".4f"),
    ("cov80 GARCH-t", ("garch_t", "coverage_80"), ".4f"),
    ("cov80 GARCH-t exp.", ("garch_t_expanding", "coverage_80"), ".4f"),
    ("cov50 model", ("model", "coverage_50"), ".4f"),
    ("cov50 RW", ("random_walk", "coverage_50"), ".4f"),
    ("cov50 GARCH-t", ("garch_t", "coverage_50"), ".4f"),
    ("hit rate", ("direction", "hit_rate"), ".4f"),
    ("Wilson lo", ("direction", "wilson_95", 0), ".4f"),
    ("Wilson hi", ("direction", "wilson_95", 1), ".4f"),
    ("always up", ("direction", "always_up"), ".4f"),
]


CHANNEL_COLUMNS = [(f"{label} {kind}", (who, key), fmt)
                   for who, label in (("model", "model"), ("unigram", "unigram"),
                                      ("unigram_per_asset", "unigram/asset"), ("persistence", "persistence"))
                   for kind, key, fmt in (("NLL", "nll", ".4f"), ("acc", "accuracy", ".1%"))]


RETURN_TABLES = {"nll": NLL_COLUMNS, "crps": CRPS_COLUMNS, "calibration": CALIBRATION_COLUMNS}


def group_rows(results: dict) -> list[tuple[str, dict]]:
    """(label, block) of the return tables: all, each category, each asset."""
    ret = results["returns"]
    rows = [("all", ret["overall"])]
    rows += [(f"{cat} (category)", block) for cat, block in ret["per_category"].items()]
    rows += [(symbol, block) for symbol, block in ret["per_asset"].items()]
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def return_table(results: dict, columns) -> str:
    return markdown_table(["group", *[c[0] for c in columns]],
                          [[label, *[format_value(get_path(block, p), f) for _, p, f in columns]]
                           for label, block in group_rows(results)])


def channel_table(results: dict) -> str:
    rows = [[name, *[format_value(get_path(entry, p), f) for _, p, f in CHANNEL_COLUMNS]]
            for name, entry in results["channels"].items()]
    return markdown_table(["channel", *[c[0] for c in CHANNEL_COLUMNS]], rows)


def _split_of(results: dict) -> str:
    return results.get("split", "test")


def headline(results: dict) -> str:
    """A few lines for the end of training / `make demo`."""
    s = _split_of(results)
    h, ov = results["headline"], results["returns"]["overall"]
    fv = format_value
    dm, pooled = ov["dm"]["vs_garch_t"], get_path(ov, ("dm_pooled", "vs_garch_t"))
    lines = [
        f"{results.get('name', 'run')} {s}: loss {fv(results[f'{s}_loss'], '.4f')} (unigram "
        f"{fv(results['unigram_loss'], '.4f')}), accuracy {fv(results[f'{s}_accuracy'], '.1%')} (mean over channels, "
        f"as in training), "
        f"{results['targets']} targets",
        f"close return NLL skill vs GARCH-t {fv(h['nll_skill_vs_garch_t'], '+.4f')} nats/day "
        f"(> 0: the model is better; DM on the date means {fv(dm['statistic'], '+.2f')}, p "
        f"{fv(dm['p_value'], '.3g')}, on the asset-days {fv(get_path(pooled, ('statistic',)), '+.2f')}, p "
        f"{fv(get_path(pooled, ('p_value',)), '.3g')}; DM < 0 favours the model), vs RW "
        f"{fv(h['nll_skill_vs_random_walk'], '+.4f')}; "
        f"CRPS skill vs GARCH-t {fv(h['crps_skill_vs_garch_t'], '+.4f')}, vs RW {fv(h['crps_skill_vs_random_walk'], '+.4f')}",
        f"model beats GARCH-t on NLL for {h['assets_beating_garch_t_nll']}/{h['assets_with_garch_t']} assets "
        f"(share {fv(h['share_beating_garch_t_nll'], '.4f')}); against GARCH-t refitted on an expanding window: "
        f"NLL skill {fv(h.get('nll_skill_vs_garch_t_expanding'), '+.4f')} (DM p "
        f"{fv(ov['dm'].get('vs_garch_t_expanding', {}).get('p_value'), '.3g')}), better on "
        f"{h.get('assets_beating_garch_t_expanding_nll', 0)}/{h.get('assets_with_garch_t_expanding', 0)} assets",
        f"coverage 80% {fv(ov['model']['coverage_80'], '.4f')}, 50% {fv(ov['model']['coverage_50'], '.4f')}; "
        f"direction hit rate {fv(ov['direction']['hit_rate'], '.4f')} [{fv(ov['direction']['wilson_95'][0], '.4f')}, "
        f"{fv(ov['direction']['wilson_95'][1], '.4f')}] vs always up {fv(ov['direction']['always_up'], '.4f')}",
    ]
    if results.get("run_dir"):
        prefix = "" if s == "test" else "val_"
        lines.append(f"report: {Path(results.get('output_dir') or results['run_dir']) / f'{prefix}report.md'}")
    return "\n".join(lines)


def write_report(results: dict, run_dir, name: str = "report.md", sections: list[str] = ()) -> Path:
    """report.md: the tables and plots, every number formatted from `results` (the dict written as JSON), and the
    Markdown lines of further sections (the multi-horizon tables) before the definitions."""
    s = _split_of(results)
    fv = format_value
    ov = results["returns"]["overall"]
    out = [f"# {results.get('name', 'run')}: {s} evaluation", ""]
    out.append(f"Run `{results.get('run_dir', run_dir)}`, best epoch {results.get('best_epoch')}, "
               f"{results.get('parameters', 0):,} parameters, {results['targets']} scored targets "
               f"(every {s} candle once, context reaching back). All numbers below are formatted from "
               f"`{results_name(s)}`." + (" The model was selected on val loss, so val numbers are optimistic."
                                          if s == "val" else ""))
    out += ["", "## Headline", "", "```", headline(results), "```", ""]
    out += ["## Per channel (token level, nats per token)", "",
            f"{s} loss {fv(results[f'{s}_loss'], '.4f')} (mean over channels, as in training), accuracy "
            f"{fv(results[f'{s}_accuracy'], '.1%')} (as training prints it and the table below gives it); "
            f"training-unigram loss {fv(results['unigram_loss'], '.4f')}.", "",
            channel_table(results), ""]
    titles = {"nll": "Close-to-close return: NLL (nats per day, log-return units)",
              "crps": "Close-to-close return: CRPS (log-return units)",
              "calibration": "Close-to-close return: interval coverage and direction"}
    for key, columns in RETURN_TABLES.items():
        out += [f"## {titles[key]}", "", return_table(results, columns), ""]
    missing = {a: b["garch_t_unusable"] for a, b in results["returns"]["per_asset"].items() if b.get("garch_t_unusable")}
    if missing:
        out += ["Assets without a GARCH-t baseline (left out of every GARCH-t comparison):", ""]
        out += [f"- {asset}: {reason}" for asset, reason in missing.items()] + [""]
    out += ["## PIT histogram (all assets, 10 bins; calibrated = 0.1 each)", ""]
    pit_rows = [[f"{k / PIT_BINS:.1f}-{(k + 1) / PIT_BINS:.1f}",
                 *[fv(get_path(ov, (who, "pit_histogram", k)), ".4f") for who in ("model", *BASELINES)]]
                for k in range(PIT_BINS)]
    out += [markdown_table(["PIT bin", "model", "RW", "GARCH-t"], pit_rows), ""]
    plots = results.get("plots") or {}
    if plots:
        out += ["## Plots", ""]
        for title, key in (("Training curves", "training_curves"), ("Calibration", "calibration"),
                           ("Per-asset NLL skill against GARCH-t", "skill_vs_garch_t")):
            if plots.get(key):
                out += [f"### {title}", "", f"![{title}]({plots[key]})", ""]
    out += list(sections)
    d = results.get("definitions", {})
    out += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in d.items()] + [""]
    path = Path(run_dir) / name
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(out))
    tmp.replace(path)
    return path


COMPARE_COLUMNS = [
    ("name", ("name",), "s"), ("params", ("parameters",), ","), ("vocab", ("close_bins", "vocab_size"), "d"),
    ("loss", ("{split}_loss",), ".4f"), ("accuracy", ("{split}_accuracy",), ".1%"),
    ("unigram loss", ("unigram_loss",), ".4f"),
    ("NLL skill vs RW", ("headline", "nll_skill_vs_random_walk"), "+.4f"),
    ("NLL skill vs GARCH-t", ("headline", "nll_skill_vs_garch_t"), "+.4f"),
    ("CRPS skill vs RW", ("headline", "crps_skill_vs_random_walk"), "+.4f"),
    ("CRPS skill vs GARCH-t", ("headline", "crps_skill_vs_garch_t"), "+.4f"),
    ("cov80", ("returns", "overall", "model", "coverage_80"), ".4f"),
    ("cov50", ("returns", "overall", "model", "coverage_50"), ".4f"),
    ("share beating GARCH-t", ("headline", "share_beating_garch_t_nll"), ".4f"),
]


def format_compare(table) -> str:
    """The compare table as markdown."""
    fmt = {h: f for h, _, f in COMPARE_COLUMNS}
    rows = []
    for record in table.to_dict("records"):
        cells = []
        for h in table.columns:
            v = record[h]
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            cells.append(str(v) if h in ("name", "run") else format_value(v, fmt[h]))
        rows.append(cells)
    return markdown_table(list(table.columns), rows)
