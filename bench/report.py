"""Collect bench/results/*.json into bench/results/README.md: one Markdown table (what was measured, against which
reference from the same run, the ratio, the target), the machine each ran on, and the throughput detail.

Run: `python bench/report.py` (after the benchmarks; `make bench` runs it last).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine_text(m) -> str:
    if isinstance(m, str):
        return m
    if "cpu" in m:   # bench/common.py machine()
        text = f"{m['cpu']}, {m['cpu_count']} CPUs" + (f", torch {m['torch']} ({m['torch_threads']} threads)"
                                                      if "torch" in m else "")
        if m.get("gpu"):
            text = f"{m['gpu']} x{m.get('gpu_count', 1)}; " + text
        return text
    return ", ".join(f"{k} {v}" for k, v in m.items() if not k.startswith("load"))


def load_text(m) -> str:
    if isinstance(m, dict):
        loads = [m.get(k) for k in ("load1_start", "load1_end", "loadavg_1min_at_end") if m.get(k) is not None]
        if loads:
            return " / ".join(f"{x:.2f}" for x in loads)
    return "n/a"


def met(ok) -> str:
    return "met" if ok else "**not met**"


def case_name(case: str) -> str:
    return "sample" if case == "sample" else f"Case {case.upper()}"


def dtype_name(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16"}.get(dtype, dtype)


def rows_train_throughput(r: dict) -> list[list[str]]:
    peak = r["peak"]
    unit, scale = ("TFLOP/s", 1e12) if r["machine"].get("device") == "cuda" else ("GFLOP/s", 1e9)
    out = []
    for shape in r["shapes"]:
        v = shape["variants"][0]
        target = r["summary"]["target"] if shape is r["shapes"][0 if r["machine"].get("device") == "cuda" else 1] else ""
        out.append([f"training throughput, {case_name(shape['case'])} shapes, batch {shape['batch_size']} "
                    f"({v['name']})", f"{v['positions_per_s']:,.0f} candles/s = {v['flops'] / scale:.1f} {unit}",
                    f"{dtype_name(peak['dtype'])} matmul peak {peak['flops'] / scale:.1f} {unit}", f"MFU {v['mfu']:.2f}",
                    f"{target}: {met(r['summary']['met'])}" if target else ""])
    return out


def rows_time_to_loss(r: dict) -> list[list[str]]:
    o, e = r["original"], r["every_position"]
    lr = r.get("learning_rates", {})
    at = {side: f" at lr {lr[side]:g}" if side in lr else "" for side in ("original", "every_position")}
    ours = (f"{e['seconds_to_target']:.1f} s ({e['steps_to_target']} steps){at['every_position']}"
            if e.get("seconds_to_target") else "not reached")
    ratio = f"{r['ratio']:.1f}x faster ({r['step_ratio']:.1f}x fewer steps)" if r.get("ratio") else "n/a"
    return [[f"time to val loss {r['target_val_loss']:.3f}, every-position loss ({r['data']})", ours,
             f"original objective {o['seconds_to_target']:.1f} s ({o['steps_to_target']} steps){at['original']}", ratio,
             f"{r['summary']['target']}: {met(r['summary']['met'])}"]]


def rows_memory(r: dict) -> list[list[str]]:
    cases = r["cases"]
    if r["machine"].get("device") == "cuda":
        ours = ", ".join(f"{c.upper()} {v['allocated_gb']:.1f}" for c, v in cases.items())
        what = "peak memory per training step, batch 32 (CUDA, bf16), GB"
    else:
        ours = "; ".join(f"{c.upper()} {v['bf16_autocast_gb']:.1f} (fp32 {v['fp32_gb']:.1f})" for c, v in cases.items())
        what = "peak memory per training step, batch 32 (CPU estimate of tensors, bf16 autocast as on CUDA), GB"
    guide = ", ".join(f"{c.upper()} {v['guide_gb']}" for c, v in cases.items())
    return [[what, ours, f"guide per GPU: {guide}", "", ""]]


def rows_tokenizer(r: dict) -> list[list[str]]:
    rows = [[f"tokenizer fit + encode, {r['candles']:,} candles", f"{r['ours']['total_s']:.1f} s",
             f"k-means (1024 clusters, 10 restarts), extrapolated {r['kmeans']['extrapolated_four_channels_s']:,.0f} s",
             f"{r['ratio_kmeans_over_ours']:,.0f}x faster", ""]]
    if "same_subsample" in r:
        same = r["same_subsample"]
        rows.append([f"tokenizer fit + encode, the same {same['candles']:,} candles as k-means", f"{same['ours_s']:.3f} s",
                     f"k-means per channel, fit + predict, {same['kmeans_four_channels_s']:.1f} s (measured)",
                     f"{same['ratio']:,.0f}x faster", ""])
    return rows


def rows_data_load(r: dict) -> list[list[str]]:
    return [[f"load a cache of {r['candles']:,} candles", f"{r['seconds']:.2f} s, +{r['peak_mb']} MB",
             f"plain read_parquet + concat {r['reference_seconds']:.2f} s, +{r['reference_peak_mb']} MB",
             f"time {r['time_ratio']}x, memory {r['memory_ratio']}x", ""]]


def rows_generate(r: dict) -> list[list[str]]:
    rows = []
    for s in r["shapes"]:
        ref = s["cached_at_reference_paths"]
        rows.append([f"sample paths, {case_name(s['case'])} shapes (context {s['context_length']}), KV cache",
                     f"{s['cached']['candles_per_s']:,.0f} candles/s at {s['cached']['paths']} paths"
                     + ("" if ref["paths"] == s["cached"]["paths"] else f"; {ref['candles_per_s']:,.0f} at {ref['paths']}"),
                     f"no cache, {s['uncached']['candles_per_s']:,.0f} candles/s at {s['uncached']['paths']} paths "
                     f"({s['uncached']['steps']} steps)",
                     f"{s['ratio']:.1f}x", f">= {s['target']:.0f}x: {met(s['met'])}"])
    return rows


def rows_backtest(r: dict) -> list[list[str]]:
    d, g = r["dense"], r["gaps"]
    return [[f"backtest engine, {r['assets']} assets x {r['days']:,} days, dense panel", f"{d['engine_s']:.3f} s",
             f"plain per-day Python loop {d['loop_s']:.1f} s (equity max abs diff {d['max_abs_equity_diff']:.0e})",
             f"{d['ratio']:.0f}x", f">= {r['target']:.0f}x: {met(r['met'])}"],
            ["backtest engine, same panel with gaps (missing bars, listings, ends, 5/7-bar horizons)",
             f"{g['engine_s']:.3f} s", f"plain loop {g['loop_s']:.1f} s (max abs diff {g['max_abs_equity_diff']:.0e})",
             f"{g['ratio']:.0f}x", ""]]


def rows_skill(r: dict) -> list[list[str]]:
    def text(v):
        o, g = v["overall"], v["overall"]["vs_garch_t"]
        share = v["share_beating_garch_t_min_days"]
        pooled = (f", {g['pooled_dm_statistic']:+.2f} (p {g['pooled_dm_p']:.2g}) on the asset-days"
                  if g.get("pooled_dm_p") is not None else "")
        return (f"NLL skill vs GARCH-t {g['nll_skill']:+.4f} (DM {g['dm_statistic']:+.2f} (p {g['dm_p']:.2g}) on the "
                f"date means{pooled}; < 0 favours the model), vs RW "
                f"{o['vs_random_walk']['nll_skill']:+.4f}; CRPS skill vs GARCH-t {g['crps_skill']:+.4f}; beats GARCH-t on "
                f"{'n/a' if share is None else f'{share:.0%}'} of {v['assets_min_days_with_garch_t']} assets >= 100 "
                f"test days;{expanding(v)} cover 80/50 {o['coverage_80']:.3f}/{o['coverage_50']:.3f}")

    def expanding(v):
        e, share = v["overall"].get("vs_garch_t_expanding"), v.get("share_beating_garch_t_expanding_min_days")
        if not e or e["nll_skill"] is None:
            return ""
        return (f" vs GARCH-t refitted on an expanding window {e['nll_skill']:+.4f} (DM p {e['dm_p']:.2g}), beats it on "
                f"{'n/a' if share is None else f'{share:.0%}'} of {v['assets_min_days_with_garch_t_expanding']};")

    v, prev = r["variants"], r["variants"]["previous_default"]

    def gain(x):
        d = x["overall"]["vs_garch_t"]["nll_skill"] - prev["overall"]["vs_garch_t"]["nll_skill"]
        return f"NLL {d:+.4f} nats/day"
    budget = f"{r['epochs']} epochs" + (f" x {r['max_steps_per_epoch']} steps" if r["max_steps_per_epoch"] else "")
    default = r["summary"]["default"]
    rows = [[f"close-return density on test, previous default (unscaled), calibrated: T = "
             f"{v['calibrated']['close_temperature']:.3f}, then a width per category, both fitted on val ({r['data']}; "
             f"{budget}{', --quick' if r['quick'] else ''}; {r['seconds']['total'] / 60:.1f} min)",
             text(v["calibrated_width"]), f"previous default (T = 1): {text(prev)}", gain(v["calibrated_width"]),
             f"{r['summary']['target']}" + ("" if default != "calibrated_width" else f": {met(r['summary']['met'])}")],
            ["the same run, the temperature alone (the previous calibration)", text(v["calibrated"]),
             "previous default (row above)", gain(v["calibrated"]), ""]]
    chosen = r.get("chosen_on_val")
    if chosen:
        lam = r["runs"][chosen]["scale_lambda"]
        rows += [[f"the scale lever: features over a past-only EWMA sigma (lambda {lam:g}, the best on val), log sigma "
                  f"into the model, calibrated (T = {v[chosen]['close_temperature']:.3f} and widths); "
                  + ("the configs' default" if r.get("kept") else "worse on val, not kept"), text(v[chosen]),
                  "previous default (row above)", gain(v[chosen]), met(v[chosen]["goals"]["all_met"])],
                 ["the scale lever, the temperature alone", text(v[f"{chosen}_temperature_only"]),
                  "previous default (row above)", gain(v[f"{chosen}_temperature_only"]), ""]]
    for name, run in r["runs"].items():      # the calendar lever (--calendar): chosen on val or not, with the numbers
        plain = name.removesuffix("_calendar")
        if run.get("calendar") and name in r["val"] and plain in r["val"]:
            nll, ref = r["val"][name]["overall"]["nll"], r["val"][plain]["overall"]["nll"]
            rows.append(["the calendar lever: the same scale run with each candle's weekday as an input "
                         "(model.calendar), on val", f"val NLL {nll:.4f}", f"without it: {ref:.4f}",
                         f"NLL {ref - nll:+.4f} nats/day on val",
                         "chosen on val" if name == chosen else "worse on val, not kept (test not scored)"])
    pooled = r.get("ensemble_kept")
    if pooled:
        rows.append([f"the linear pool of {r['seeds']} seeds of the scale lever (`marketgpt ensemble`), each "
                     f"calibrated; better than one run on val{', kept' if r.get('kept') == pooled else ''}",
                     text(v[pooled]), "previous default (row above)", gain(v[pooled]),
                     met(v[pooled]["goals"]["all_met"])])
    names = {"garch_t": "GARCH-t", "garch_t_expanding": "GARCH-t refitted on an expanding window"}
    for b, g in r.get("baseline_goals", {}).items():
        o, cats = prev["overall"][f"vs_{b}"], prev["per_category"]
        per = ", ".join(f"{c} {x[f'vs_{b}']['coverage_80']:.3f}/{x[f'vs_{b}']['coverage_50']:.3f}"
                        for c, x in cats.items() if c in g["categories_checked"])
        rows.append([f"the yardstick: {names[b]} itself against the calibration goals, on its "
                     f"{o['n']:,} test rows",
                     f"cover 80/50 {o['coverage_80']:.3f}/{o['coverage_50']:.3f} ({per}); PIT "
                     f"{o['pit_max_dev_in_band']:.1f} bands from flat", "", "",
                     "coverage in band overall / every category / PIT flat: "
                     + " / ".join(met(g[k]) for k in ("coverage_in_band_overall", "coverage_in_band_every_category",
                                                       "pit_flat_overall"))])
    return rows


def rows_horizons(r: dict) -> list[list[str]]:
    rows = []
    for h, f in r["figures"].items():
        o, g = f["overall"], f["overall"]["vs_garch_t"]
        first = h == str(r["horizons"][0])
        rows.append([f"{h}-day close return from sample paths on test, {r['origins']} origins every {r['every']} days, "
                     f"{r['samples']} paths ({r['run']}{', --quick' if r['quick'] else ''}"
                     + (f"; {r['seconds']['total'] / 60:.1f} min)" if first else ")"),
                     f"{o['n']:,} forecasts; CRPS {o['crps']:.5f}; cover 50/80/95 {o['coverage_50']:.3f}/"
                     f"{o['coverage_80']:.3f}/{o['coverage_95']:.3f}",
                     f"GARCH-t refitted at each origin (DM {g['dm_statistic']:+.2f}, p {g['dm_p']:.2g}; its "
                     f"cover {g['coverage_50']:.3f}/{g['coverage_80']:.3f}/{g['coverage_95']:.3f}); RW "
                     f"{o['vs_random_walk']['crps_skill']:+.4f} (DM {o['vs_random_walk']['dm_statistic']:+.2f}); "
                     f"bootstrap {o['vs_bootstrap']['crps_skill']:+.4f}",
                     f"CRPS skill {g['crps_skill']:+.4f}",
                     f"{r['summary']['target']}: {met(r['summary']['met'])}" if first else ""])
    return rows


def rows_api_load(r: dict) -> list[list[str]]:
    res, ref = r["results"], r["results"]["health"]
    names = {"signals": "GET /v1/signals", "history": "GET /v1/signals/history", "fan": "GET /v1/fan",
             "monitor": "GET /v1/monitor", "forecast": "POST /v1/forecast (5 days, 64 paths)"}
    return [[f"REST API, {r['clients']} clients on loopback, {names[k]}",
             f"{res[k]['requests_per_s']:,.1f} req/s, p50 {res[k]['p50_ms']:.0f} ms, p99 {res[k]['p99_ms']:.0f} ms, "
             f"{res[k]['errors']} errors of {res[k]['requests']}",
             f"GET /health {ref['requests_per_s']:,.1f} req/s, p50 {ref['p50_ms']:.0f} ms", f"p50 {res[k]['p50_vs_health']}x",
             "0 errors: " + met(res[k]["errors"] == 0)] for k in names if k in res]


def rows_monitor_alarm(r: dict) -> list[list[str]]:
    s, alarm, g = r["summary"], r["alarm"], r["groups"]

    def day(v):
        return "-" if v is None else f"day {v:g}"

    def arl(rows, h):
        row = next(x for x in rows if x["threshold"] == h)
        return f"{'>=' if row['censored'] else ''}{row['arl']:,.0f}"
    u = s["unchanged"]
    rows = []
    for case, text in (("x3", "tripled"), ("x2", "doubled")):
        if case not in s:
            continue
        c = s[case]
        rows.append([f"monitor alarm, returns {text} from {r['break']}: all {r['assets']} assets pooled; {g} pools of "
                     f"{r['assets'] // g}",
                     f"pooled: WARN {day(c['all']['warn_delay'])}, RETRAIN {day(c['all']['retrain_delay'])}; pools: "
                     f"{c['groups_warn'] - c['groups_early']} of {g - c['groups_early']} WARN after the break (median "
                     f"{day(c['groups_warn_delay_median'])}), {c['groups_early']} before it",
                     f"unchanged: pooled {u['all']['status']} (peak {u['all']['cusum_max']:.1f}); pools: "
                     f"{u['groups_warn']} of {g} WARN, {u['groups_retrain']} RETRAIN in the year", "",
                     f"tripled pooled WARN within 10 days: {met((c['all']['warn_delay'] or 99) <= 10)}"
                     if case == "x3" else ""])
    nulls = r["calibration"]["nulls"]
    rows.append([f"monitor alarm: simulated run length to a false alarm ({r['calibration']['paths']} null streams of "
                 f"{r['calibration']['days']:,} days)",
                 "WARN (" + f"{alarm['warn_at']:g}): " + ", ".join(f"{k} {arl(v, alarm['warn_at'])}"
                                                                  for k, v in nulls.items()) + " days",
                 "RETRAIN (" + f"{alarm['retrain_at']:g}): " + ", ".join(f"{k} {arl(v, alarm['retrain_at'])}"
                                                                        for k, v in nulls.items()) + " days", "",
                 "WARN ARL >= 250, RETRAIN >= 1000: " + met(all(
                     next(x for x in v if x["threshold"] == alarm["warn_at"])["arl"] >= 250 and
                     next(x for x in v if x["threshold"] == alarm["retrain_at"])["arl"] >= 1000
                     for v in nulls.values()))])
    rows.append(["monitor alarm on one asset alone (not what it is calibrated for)",
                 f"tripled: {s['x3']['single_warn_share']:.0%} of asset-years WARN",
                 f"unchanged: {u['single_warn_share']:.0%} WARN, {u['single_retrain_share']:.0%} RETRAIN",
                 f"{s['x3']['single_warn_share'] / max(u['single_warn_share'], 1e-9):.1f}x", ""])
    return rows


FORMATTERS = {"skill": rows_skill, "train_throughput": rows_train_throughput, "generate": rows_generate, "backtest": rows_backtest, "time_to_loss": rows_time_to_loss, "memory": rows_memory,
              "tokenizer": rows_tokenizer, "data_load": rows_data_load, "api_load": rows_api_load,
              "monitor_alarm": rows_monitor_alarm, "horizons": rows_horizons}
ORDER = ["train_throughput", "time_to_loss", "memory", "generate", "backtest", "tokenizer", "data_load", "skill",
         "horizons"]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def main() -> int:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    names = [n for n in ORDER if n in results] + sorted(n for n in results if n not in ORDER)
    rows, machines = [], []
    for name in names:
        r = results[name]
        formatter = FORMATTERS.get(name)
        new = formatter(r) if formatter else [[name, json.dumps({k: v for k, v in r.items() if k != "machine"})[:120], "", "", ""]]
        m = machine_text(r.get("machine", "n/a"))
        if m not in machines:
            machines.append(m)
        tag = f"[{machines.index(m) + 1}]"
        rows += [row + [f"{tag} {load_text(r.get('machine', {}))}"] for row in new]
    lines = ["# Benchmark results", "",
             "Written by `bench/report.py` from `bench/results/*.json` (`make bench`). Every reference is measured in "
             "the same run as the number it is compared with. Load: the 1-minute load average at the start / end of "
             "the benchmark, its own process included.", ""]
    lines += table(["benchmark", "ours", "reference (same run)", "ratio", "target", "machine, load"], rows)
    lines += ["", "Machines:", ""] + [f"{i + 1}. {m}" for i, m in enumerate(machines)]
    tp = results.get("train_throughput")
    if tp:
        cuda = tp["machine"].get("device") == "cuda"
        unit, scale = ("TFLOP/s", 1e12) if cuda else ("GFLOP/s", 1e9)
        lines += ["", "## Training throughput by variant", "",
                  f"Peak: {dtype_name(tp['peak']['dtype'])} torch.mm {tp['peak']['size']}^2, best of 5: "
                  f"{tp['peak']['flops'] / scale:.1f} {unit}"
                  + (f"; bf16 for reference: {tp['peak_bf16']['flops'] / scale:.1f} {unit}" if "peak_bf16" in tp else "")
                  + ". FLOPs per candle position: 6N + 12·L·d·T, N = non-embedding parameters including the 4 output "
                  "heads. Each variant below undoes one of the trainer's speed changes, or adds an option.", ""]
        detail = []
        for shape in tp["shapes"]:
            for v in shape["variants"]:
                detail.append([f"{case_name(shape['case'])} (batch {shape['batch_size']} x {shape['context_length']})",
                               v["name"].strip(), f"{v['step_s']:.3f}", f"{v['positions_per_s']:,.0f}",
                               f"{v['flops'] / scale:.1f}", f"{v['mfu']:.2f}"])
        lines += table(["shapes", "variant", "s/step", "candles/s", unit, "MFU"], detail)
    out = RESULTS / "README.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
