"""Sampling candle paths from a MarketGPT: channel by channel, with a KV cache, many paths of many assets per batch.

**Context windows.** The position embedding is learned for positions 0..context_length-1 (T), so a path cannot slide
one candle at a time past T with a cache: every cached key was computed at its old position. The scheme here:
the prompt is the last `T - min(horizon - 1, stride)` candles of the history (stride = T // 2), so a horizon of up to
stride + 1 steps is generated without ever leaving the window (Case C, T = 128: every horizon up to 65 days). A
longer path, once the window is full, is re-primed: the cache is rebuilt from the last T - stride candles (the real
history and the sampled candles so far) at positions 0.. and generation goes on. The model is trained at every
position of windows that start anywhere in a series, so a window of T - stride candles is one it knows; the context
never drops below T - stride candles (unless the history is shorter). The uncached path (`use_cache=False`, the
reference in the tests) runs the trunk over the very same window at every step, so the two agree up to float error.

**Sampling.** Channel k of the next candle is drawn from its head conditioned on the channels drawn before it (close
first), by inverse CDF: token = #{v : cdf(v) <= u} for a uniform u. The uniforms of an asset's paths come from their
own generator, seeded by (seed, the prompt's key), drawn as one (num_samples, horizon, channels) array: a path does not
depend on max_batch, on the device, nor on which other assets are in the request. The default (temperature None,
top_p None) samples the model's density as evaluation scores it: with the run's calibrated close temperature and
width, if it has them (calibration.py). A number t replaces both: every channel's logits as trained, divided by t
(0: argmax); top_p keeps the smallest set of tokens whose probability reaches top_p.

**Scale.** A model of a scaled tokenizer (tokenizer_scale.py) takes at each position the log scale of the candle it
predicts. A prompt then carries those inputs and sigma, the scale of the first candle to sample; each path carries its
own sigma, updated after every sampled candle by the tokenizer's EWMA recursion with that candle's close return
(its close token's decode value times sigma), so the next position gets the path's own scale, and
`CandleTokenizer.decode_paths(tokens, last_close, sigma)` runs the same recursion to decode the path.

**Calendar.** A model with model.calendar takes each candle's weekday. A prompt then carries the weekdays of its
candles and of the candles to sample (the forecaster's future dates, forecast.future_dates), the same on every path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import tokenizer_scale
from .model import MarketGPT


@dataclass
class Prompt:
    """The token history (n, C) of one asset, its asset and category ids, and a key that seeds its paths."""

    tokens: np.ndarray
    asset: int
    category: int
    key: int
    scale: np.ndarray | None = None   # (n,) the model's scale input at each position, for a scaled tokenizer
    sigma: float | None = None        # the scale of the first candle to sample
    weekday: np.ndarray | None = None  # (n + horizon,) the weekday (Monday 0) of each candle, then of each to sample


@dataclass
class PathScale:
    """What sampling needs of a scaled tokenizer: its EWMA decay and the close channel's decode values (sigma units)."""

    lam: float
    close_values: np.ndarray

    @classmethod
    def of(cls, tokenizer) -> "PathScale | None":
        return cls(tokenizer.scale_lambda, tokenizer.bin_values("close")) if tokenizer.scaled else None


#: memory for the KV cache of one chunk of paths when max_batch is not given. A path's cache holds keys and values of
#: every layer at every position: 2 x layers x context x d_model values (Case C fp32: 1.5 MB; Case A: 37.7 MB, so 512
#: Case A paths at once would need 19 GB).
KV_BUDGET_BYTES = 2 * 2**30


def default_max_batch(model: MarketGPT, budget: int = KV_BUDGET_BYTES) -> int:
    """The most paths whose KV cache fits in `budget` bytes (at least 1)."""
    cfg = model.cfg
    per_path = 2 * cfg.num_layers * cfg.context_length * cfg.d_model * model.tok_emb.weight.element_size()
    return max(1, budget // per_path)


def window_plan(available: int, horizon: int, context_length: int) -> tuple[int, int]:
    """(prompt length, re-prime length): see the module docstring."""
    stride = max(1, context_length // 2)
    keep = max(1, context_length - stride)
    first = max(1, min(available, context_length - min(horizon - 1, stride)))
    return first, keep


def _draw(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float | None) -> torch.Tensor:
    """One token per row of logits (B, V) by inverse CDF at the uniforms u (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p is not None and top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        outside = (ranked.cumsum(-1) - ranked) >= top_p      # tokens after the nucleus is complete
        probs = probs.scatter(-1, order, ranked.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    cdf = probs.cumsum(-1)
    token = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return token.clamp_(max=logits.shape[-1] - 1)


def _sample_candle(model: MarketGPT, h: torch.Tensor, u: torch.Tensor, temperature: float | None,
                   top_p: float | None, category: torch.Tensor) -> torch.Tensor:
    """The next candle (B, C) after last hidden states h (B, D) of paths of categories (B,), channel by channel,
    uniforms u (B, C)."""
    out = torch.empty(h.shape[0], 0, dtype=torch.long, device=h.device)
    for k in range(model.num_channels):
        # default: the model's calibrated logits (the close's temperature and width); an explicit t replaces that
        logits = model.next_channel_logits(h, out, category, calibrated=temperature is None).float()
        token = _draw(logits, u[:, k], 1.0 if temperature is None else temperature, top_p)
        out = torch.cat([out, token[:, None]], dim=1)
    return out


def _chunk_paths(model: MarketGPT, prompts: list[Prompt], rows: list[tuple[int, int, int]], first: int, keep: int,
                 horizon: int, uniforms: dict[int, np.ndarray], temperature: float | None, top_p: float | None,
                 use_cache: bool, on_step: Callable[[int], None] | None, path_scale: PathScale | None) -> np.ndarray:
    """Sample the rows (prompt index, first path, last path) of one chunk, all with prompts of length `first`."""
    device = model.tok_emb.weight.device
    T = model.cfg.context_length
    C = model.num_channels
    owners = np.concatenate([np.full(b - a, p) for p, a, b in rows])
    distinct, owner_index = np.unique(owners, return_inverse=True)
    B = len(owners)
    seq = torch.empty(B, first + horizon, C, dtype=torch.long, device=device)
    heads = torch.from_numpy(np.stack([prompts[p].tokens[-first:] for p in distinct]).astype(np.int64)).to(device)
    seq[:, :first] = heads[torch.from_numpy(owner_index).to(device)]
    asset = torch.tensor([prompts[p].asset for p in owners], device=device)
    category = torch.tensor([prompts[p].category for p in owners], device=device)
    u = torch.from_numpy(np.concatenate([uniforms[p][a:b] for p, a, b in rows])).to(device)   # (B, H, C)
    index = torch.from_numpy(owner_index).to(device)
    sc = d_sc = sigma = wd = d_wd = None
    if prompts[distinct[0]].weekday is not None:   # the calendar: the same along every path of a prompt
        d_wd = torch.from_numpy(np.stack([prompts[p].weekday[len(prompts[p].tokens) - first:][:first + horizon]
                                          for p in distinct]).astype(np.int64)).to(device)
        wd = d_wd[index]
    if path_scale is not None:   # the model's scale inputs along each path, and each path's sigma (float64)
        d_sc = torch.from_numpy(np.stack([prompts[p].scale[-first:] for p in distinct]).astype(np.float32)).to(device)
        sc = torch.empty(B, first + horizon, dtype=torch.float32, device=device)
        sc[:, :first] = d_sc[index]
        sigma = torch.tensor([prompts[p].sigma for p in owners], dtype=torch.float64, device=device)
        values = torch.from_numpy(path_scale.close_values).to(device)

    def inputs(a: int, b: int, scale=sc, weekday=wd) -> dict:      # the paths' inputs (or the distinct prompts')
        return {k: v[:, a:b] for k, v in (("scale", scale), ("weekday", weekday)) if v is not None}

    if use_cache:   # each distinct prompt is encoded once per chunk and its cache shared by its paths there
        d_asset = torch.tensor([prompts[p].asset for p in distinct], device=device)
        d_category = torch.tensor([prompts[p].category for p in distinct], device=device)
        cache = model.new_cache(len(distinct))
        h = model.hidden(heads, d_asset, d_category, cache, **inputs(0, first, d_sc, d_wd))[:, -1]
        h = h.index_select(0, index)
        cache = cache.select(index)
    else:
        h = model.hidden(seq[:, :first], asset, category, **inputs(0, first))[:, -1]
    start, length = 0, first
    for step in range(horizon):
        seq[:, length] = _sample_candle(model, h, u[:, step], temperature, top_p, category)
        if sc is not None:
            r2 = torch.clamp((values[seq[:, length, 0]] * sigma) ** 2, max=tokenizer_scale.MAX_MOVE ** 2)
            sigma = torch.sqrt(torch.clamp(path_scale.lam * sigma ** 2 + (1 - path_scale.lam) * r2,
                                           min=tokenizer_scale.FLOOR ** 2))
            sc[:, length] = torch.log(sigma / tokenizer_scale.REFERENCE).float()
        length += 1
        if on_step is not None:
            on_step(B)
        if step == horizon - 1:
            break
        reprime = length - start > T
        if reprime:
            start = length - keep
        if not use_cache:
            h = model.hidden(seq[:, start:length], asset, category, **inputs(start, length))[:, -1]
        elif reprime:
            cache = model.new_cache(B)
            h = model.hidden(seq[:, start:length], asset, category, cache, **inputs(start, length))[:, -1]
        else:
            h = model.hidden(seq[:, length - 1:length], asset, category, cache, **inputs(length - 1, length))[:, -1]
    return seq[:, first:].cpu().numpy()


@torch.inference_mode()
def sample_paths(model: MarketGPT, prompts: list[Prompt], horizon: int, num_samples: int, seed: int = 0,
                 temperature: float | None = None, top_p: float | None = None, max_batch: int | None = None,
                 use_cache: bool = True, on_step: Callable[[int], None] | None = None,
                 path_scale: PathScale | None = None) -> list[np.ndarray]:
    """Token paths (num_samples, horizon, C) int64 for each prompt, in eval mode (the previous mode is restored).

    All paths of all prompts go through the model together, max_batch paths at a time (default: as many as fit a
    KV cache of KV_BUDGET_BYTES); prompts are grouped by prompt length (see window_plan). on_step(n) is called with the number of candles sampled at each step of a
    chunk: they add up to len(prompts) * num_samples * horizon. path_scale (PathScale.of(tokenizer)): a scaled
    tokenizer's recursion; its prompts carry scale and sigma."""
    if hasattr(model, "sample_paths"):     # an ensemble: each path from one member (ensemble.py)
        return model.sample_paths(prompts, horizon, num_samples, seed, temperature, top_p, max_batch, use_cache,
                                  on_step, path_scale)
    max_batch = default_max_batch(model) if max_batch is None else max_batch
    if horizon < 1 or num_samples < 1 or max_batch < 1:
        raise ValueError(f"horizon, num_samples and max_batch must be >= 1, got {horizon}, {num_samples}, {max_batch}")
    T, C = model.cfg.context_length, model.num_channels
    uniforms = {i: np.random.default_rng([seed, p.key]).random((num_samples, horizon, C)) for i, p in enumerate(prompts)}
    groups: dict[int, list[int]] = {}
    keep = window_plan(1, horizon, T)[1]
    for i, p in enumerate(prompts):
        if len(p.tokens) < 1:
            raise ValueError(f"prompt {i} has no tokens")
        if (p.weekday is None) != (prompts[0].weekday is None) or (
                p.weekday is not None and len(p.weekday) < len(p.tokens) + horizon):
            raise ValueError(f"prompt {i}: every prompt or none carries weekdays, {len(p.tokens)} + horizon "
                             f"{horizon} of them, got {None if p.weekday is None else len(p.weekday)}")
        groups.setdefault(window_plan(len(p.tokens), horizon, T)[0], []).append(i)
    out = {i: np.empty((num_samples, horizon, C), dtype=np.int64) for i in range(len(prompts))}
    was_training = model.training
    model.eval()
    try:
        for first, members in groups.items():
            rows = [(p, a, min(a + max_batch, num_samples)) for p in members for a in range(0, num_samples, max_batch)]
            chunk: list[tuple[int, int, int]] = []
            filled = 0
            for p, a, b in rows + [(-1, 0, 0)]:
                if chunk and (p < 0 or filled + (b - a) > max_batch):
                    paths = _chunk_paths(model, prompts, chunk, first, keep, horizon, uniforms, temperature, top_p,
                                         use_cache, on_step, path_scale)
                    offset = 0
                    for q, qa, qb in chunk:
                        out[q][qa:qb] = paths[offset:offset + qb - qa]
                        offset += qb - qa
                    chunk, filled = [], 0
                if p >= 0:
                    chunk.append((p, a, b))
                    filled += b - a
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(prompts))]
