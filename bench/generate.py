"""Sample-path generation with and without the KV cache, at Case C shapes (context 128) and Case A shapes (512).

Both sides run `marketgpt.generate.sample_paths` on the case's model (random weights: speed does not depend on them),
one asset with a full-length history, `--paths` paths (512), `--steps` candles ahead (21, the default forecast), fp32,
in chunks of the default max_batch (a 2 GiB KV cache: all 512 paths at Case C, 54 at a time at Case A).
The uncached side is the reference the tests check the cache against: the trunk runs over the whole window at every
step. Reported per side: candles/s (paths x steps / seconds, the prompt's prefill included), tokens/s (candles x 4
channels) and paths/s at a 21-day horizon (candles/s / 21); the ratio is cached over uncached candles/s, measured in
this run at the same number of paths.

On a CPU the uncached side would take hours at Case A (one step of 512 paths is a forward of 512 x 512 positions,
~50 TFLOP), so there it runs `--reference-steps` steps (2): every uncached step runs the trunk over a full window,
so its cost per candle does not depend on how many steps are timed; and at Case A `--reference-paths` paths (32; a
forward of 32 x 512 = 16k positions is already compute-bound). The cached side is then also timed at that many
paths, for the ratio. On a GPU both sides run the full paths and steps.

Targets: >= 8x at context 128, >= 20x at context 512. Writes bench/results/generate.json.
Run: `python bench/generate.py [--paths 512] [--steps 21] [--cases c,a]` (about 20 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CHANNELS, case_config, describe, machine, sync, write_result  # noqa: E402

from marketgpt.generate import Prompt, sample_paths  # noqa: E402
from marketgpt.model import MarketGPT  # noqa: E402

TARGETS = {"c": 8.0, "a": 20.0}
HORIZON_DAYS = 21


def timed(model, prompt, paths: int, steps: int, use_cache: bool, device, repeats: int) -> dict:
    """Best of `repeats` timings: other load on the machine only ever slows a run down."""
    sample_paths(model, [prompt], 1, min(paths, 8), use_cache=use_cache)     # warm-up: allocation, kernels
    seconds = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        sample_paths(model, [prompt], steps, paths, seed=1, use_cache=use_cache)
        sync(device)
        seconds = min(seconds, time.perf_counter() - t0)
    candles = paths * steps / seconds
    return {"paths": paths, "steps": steps, "seconds": round(seconds, 3), "candles_per_s": candles,
            "tokens_per_s": candles * CHANNELS, "paths_per_s_21d": candles / HORIZON_DAYS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", type=int, default=512)
    parser.add_argument("--steps", type=int, default=21)
    parser.add_argument("--reference-paths", type=int, default=32, help="uncached Case A paths on a CPU")
    parser.add_argument("--reference-steps", type=int, default=2, help="uncached steps on a CPU")
    parser.add_argument("--cases", default="c,a")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings per side")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {"machine": machine(device), "paths": args.paths, "steps": args.steps, "repeats": args.repeats,
              "shapes": []}
    print(describe(result["machine"]))
    for case in args.cases.split(","):
        cfg = case_config(case)
        torch.manual_seed(0)
        model = MarketGPT(cfg.model, CHANNELS, 8, 2, unknown=True).to(device).eval()
        T, V = cfg.model.context_length, cfg.model.vocab_size
        prompt = Prompt(np.random.default_rng(0).integers(0, V, (T, CHANNELS)), 0, 0, 0)
        cpu = device.type != "cuda"
        ref_paths = min(args.paths, args.reference_paths) if cpu and case == "a" else args.paths
        ref_steps = min(args.steps, args.reference_steps) if cpu else args.steps
        r = args.repeats
        cached = timed(model, prompt, args.paths, args.steps, True, device, r)
        cached_ref = cached if ref_paths == args.paths else timed(model, prompt, ref_paths, args.steps, True, device, r)
        plain = timed(model, prompt, ref_paths, ref_steps, False, device, r)
        ratio = cached_ref["candles_per_s"] / plain["candles_per_s"]
        shape = {"case": case, "context_length": T, "d_model": cfg.model.d_model, "num_layers": cfg.model.num_layers,
                 "vocab_size": V, "cached": cached, "cached_at_reference_paths": cached_ref, "uncached": plain,
                 "ratio": ratio, "target": TARGETS[case], "met": ratio >= TARGETS[case]}
        result["shapes"].append(shape)
        print(f"case {case} (ctx {T}): cached {cached['candles_per_s']:,.0f} candles/s at {args.paths} paths x "
              f"{args.steps} steps; at {ref_paths} paths cached {cached_ref['candles_per_s']:,.0f} vs uncached "
              f"{plain['candles_per_s']:,.0f} candles/s ({ref_steps} steps): {ratio:.1f}x (target {TARGETS[case]:.0f}x)")
    print(f"wrote {write_result('generate', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
