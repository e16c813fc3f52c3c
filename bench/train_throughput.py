"""Training throughput of the real trainer against the machine's measured matmul peak (model FLOP utilisation).

Peak: the best of 5 square torch.mm (2048, 3072, 4096) in the same process and thread count: fp32 on CPU (the
precision the CPU trainer runs in; bf16 printed for reference), bf16 on CUDA (the trainer's autocast precision).

Step: `Trainer.step_stats` (what `marketgpt train` runs: batch gather, forward, loss, backward, clipping, AdamW,
accuracy counts) of each case config at its batch size on a synthetic token store (random tokens; the cost does
not depend on the values). CPU: the sample and Case C shapes; CUDA (when present): Case A, and Case C. Throughput is counted in candles
(positions) per second; each candle is 4 channel tokens.

FLOPs per position (one candle): `marketgpt.model.flops_per_token` = 6N + 12·L·d_model·T, with N the
non-embedding parameters, which include the C output heads (C × d_model × vocab: real matmuls, 18% of N for Case
C) and exclude the embedding tables (lookups). 12·L·d·T counts the full T×T attention score and value matmuls,
as nanoGPT and PaLM do, although a causal kernel may skip about half of them.

On CPU, Case C is also measured with each speed change of the trainer undone on its own (for-loop AdamW, bernoulli
dropout masks, dropout on the attention probabilities), with bf16 autocast, and with torch.compile.

Writes bench/results/train_throughput.json. Run: `python bench/train_throughput.py [--steps N] [--quick]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import case_config, describe, load1, machine, matmul_peak, sync, synthetic_trainer, write_result  # noqa: E402

from marketgpt import model as model_module  # noqa: E402
from marketgpt.distributed import Dist  # noqa: E402
from marketgpt.model import flops_per_token  # noqa: E402

CPU_TARGET, GPU_TARGET = 0.60, 0.45


# --- the trainer's speed changes, undone one at a time (CPU ablations) -----------------------------------
def forloop_adamw(trainer) -> None:
    t = trainer.cfg.training
    trainer.optimizer = trainer.model.configure_optimizer(t.weight_decay, t.learning_rate, fused=False)


def bernoulli_dropout(trainer) -> None:
    for m in trainer.model.modules():
        if isinstance(m, model_module.Dropout):
            m.__class__ = nn.Dropout        # F.dropout: bernoulli_ mask


def attention_probability_dropout(trainer) -> None:
    """The attention of the previous version: dropout on the attention probabilities (math SDPA path)."""
    p = trainer.cfg.model.dropout

    def forward(self, x):
        B, T, D = x.shape
        H = self.num_heads
        q, k, v = (a.view(B, T, H, D // H).transpose(1, 2) for a in self.qkv(x).split(D, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0, is_causal=True)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))

    for block in trainer.model.blocks:
        block.attn.forward = forward.__get__(block.attn)


def bf16_autocast(trainer) -> None:
    trainer.autocast = lambda: torch.autocast(trainer.d.device.type, dtype=torch.bfloat16)


# --- measurement ---------------------------------------------------------------------------------------
def time_steps(trainer, steps: int, warmup: int) -> dict:
    """Warm-up steps, then `steps` consecutive steps as the training loop runs them: per-step wall times on CPU;
    on CUDA one synchronisation at the end (the loop itself never waits for the device)."""
    B = trainer.cfg.training.batch_size
    rng = np.random.default_rng(0)
    batches = [trainer.train_windows[rng.permutation(len(trainer.train_windows))[:B]] for _ in range(warmup + steps)]
    dev = trainer.d.device
    t0 = time.perf_counter()
    for w in batches[:warmup]:
        trainer.step_stats(w)
    sync(dev)
    warm_s = time.perf_counter() - t0
    times = []
    acc = torch.zeros(2 + 4, dtype=torch.float64, device=dev)
    t_all = time.perf_counter()
    for w in batches[warmup:]:
        t0 = time.perf_counter()
        acc += trainer.step_stats(w)
        if dev.type == "cpu":
            times.append(time.perf_counter() - t0)
    sync(dev)
    total = time.perf_counter() - t_all
    assert np.isfinite(acc[0].item())
    step = float(np.median(times)) if times else total / steps
    return {"step_s": step, "step_s_best": min(times) if times else step, "steps": steps, "warmup_s": warm_s}


def measure(case: str, dev: torch.device, steps: int, warmup: int, peak: float, variants: list) -> dict:
    cfg = case_config(case, [f"training.checkpoint_dir={tempfile.gettempdir()}"])
    m, t = cfg.model, cfg.training
    out = {"case": case, "batch_size": t.batch_size, "context_length": m.context_length, "d_model": m.d_model,
           "num_layers": m.num_layers, "vocab_size": m.vocab_size, "variants": []}
    print(f"\n{case}: batch {t.batch_size} x context {m.context_length}, {m.num_layers} layers x d_model {m.d_model}, "
          f"vocab {m.vocab_size} x 4 channels")
    for name, change, compile_ in variants:
        cfg.training.compile = compile_
        with tempfile.TemporaryDirectory() as tmp:
            trainer = synthetic_trainer(cfg, Path(tmp), Dist(device=dev))
            if change is not None:
                change(trainer)
            n_params = trainer.model.num_parameters(non_embedding=True)
            fpt = flops_per_token(m, n_params)
            r = time_steps(trainer, steps, warmup + (2 if compile_ else 0))
            del trainer
        positions = t.batch_size * m.context_length / r["step_s"]
        r.update(name=name, positions_per_s=positions, flops=positions * fpt, mfu=positions * fpt / peak)
        out["variants"].append(r)
        out.update(params_non_embedding=n_params, flops_per_position=fpt)
        extra = f"   (warm-up incl. compile {r['warmup_s']:.0f} s)" if compile_ else ""
        print(f"  {name:<46} {r['step_s']:7.3f} s/step  {positions:9,.0f} candles/s  "
              f"{r['flops'] / 1e9:8.1f} GFLOP/s  MFU {r['mfu']:.2f}{extra}", flush=True)
    print(f"  ({n_params:,} non-embedding parameters incl. the 4 output heads; {fpt / 1e6:.1f} MFLOP per candle "
          f"position; a candle is 4 channel tokens)")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="timed steps per measurement (default: 10 CPU, 30 CUDA)")
    ap.add_argument("--quick", action="store_true", help="the default trainer only: no ablations, bf16 or compile")
    args = ap.parse_args()
    dev = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    mach = machine(dev)
    print(f"machine: {describe(mach)}; 1-min load average {mach['load1_start']} (includes this process)")
    result = {"benchmark": "train_throughput", "machine": mach, "shapes": []}

    if dev.type == "cpu":
        peak = matmul_peak(dev, torch.float32)
        bf16 = matmul_peak(dev, torch.bfloat16, sizes=(2048, 4096))
        result["peak"], result["peak_bf16"] = peak, bf16
        print(f"matmul peak fp32: {peak['flops'] / 1e9:.1f} GFLOP/s (torch.mm {peak['size']}^2, best of 5); "
              f"bf16 for reference: {bf16['flops'] / 1e9:.1f} GFLOP/s")
        steps = args.steps or 10
        trainer_only = [("trainer (fp32)", None, False)]
        ablations = [("  undo fused AdamW (for-loop AdamW)", forloop_adamw, False),
                     ("  undo uniform dropout masks (bernoulli_)", bernoulli_dropout, False),
                     ("  undo flash attention (dropout on attn probs)", attention_probability_dropout, False),
                     ("trainer + bf16 autocast (option)", bf16_autocast, False),
                     ("trainer + torch.compile (--compile)", None, True)]
        result["shapes"].append(measure("sample", dev, 3 * steps, 3, peak["flops"], trainer_only))
        result["shapes"].append(measure("c", dev, steps, 2, peak["flops"], trainer_only + ([] if args.quick else ablations)))
        print("\ncase_a: CUDA only (no GPU here): a Case A step on this CPU takes about a minute")
        c = result["shapes"][1]["variants"][0]
        result["summary"] = {"target": f"Case C model FLOP/s >= {CPU_TARGET} x fp32 matmul peak", "mfu": c["mfu"],
                             "met": c["mfu"] >= CPU_TARGET}
        bf = [v for v in result["shapes"][1]["variants"] if "bf16" in v["name"]]
        if bf:
            bf[0]["mfu_vs_bf16_peak"] = bf[0]["flops"] / bf16["flops"]
    else:
        peak = matmul_peak(dev, torch.bfloat16, sizes=(4096, 8192))
        result["peak"] = peak
        print(f"matmul peak bf16: {peak['flops'] / 1e12:.1f} TFLOP/s (torch.mm {peak['size']}^2, best of 5)")
        steps = args.steps or 30
        variants = [("trainer (bf16 autocast, fused AdamW)", None, False)]
        if not args.quick:
            variants.append(("trainer + torch.compile (--compile)", None, True))
        result["shapes"].append(measure("a", dev, steps, 3, peak["flops"], variants))
        result["shapes"].append(measure("c", dev, steps, 3, peak["flops"], variants))
        best = max(result["shapes"][0]["variants"], key=lambda v: v["mfu"])
        result["summary"] = {"target": f"Case A MFU >= {GPU_TARGET} in bf16", "mfu": best["mfu"], "variant": best["name"],
                             "met": best["mfu"] >= GPU_TARGET}
    s = result["summary"]
    print(f"\ntarget: {s['target']}: measured {s['mfu']:.2f} -> {'met' if s['met'] else 'NOT met'}; "
          f"load average now {load1()}")
    print(f"wrote {write_result('train_throughput', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
