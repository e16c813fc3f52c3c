"""MarketGPT: a GPT over daily candles, each candle a tuple of C channel tokens (close, open, upper, lower [, volume]).

Input at position t: the sum of the C channel-token embeddings of candle t, a projection of the asset and category
embeddings, and a learned position embedding (with model.calendar also an embedding of candle t's weekday; with a
scaled tokenizer a projection of the log scale of candle t+1, known at t). A stack of pre-LN transformer blocks with
causal attention gives the final hidden state h_t, which sees candles 0..t only.

Output: C heads predicting candle t+1 one channel after the other (close first). Channel k of candle t+1 is read from
    z_tk = LayerNorm(h_t + sum_{j<k} E_j(y_j))        logits_tk = z_tk @ W_k
where y = candle t+1 and E_j are conditioning embedding tables (separate from the input tables). In training y is the
target (teacher forcing): one forward pass gives every channel of every position at once, via an exclusive cumulative
sum over the channel axis and one batched matmul over the channels. In generation the channels are sampled in order,
each conditioned on the ones sampled before it, so a sampled candle is one coherent draw of the joint distribution.
The close head conditions on nothing from candle t+1: its distribution is exact without targets.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig


class Dropout(nn.Dropout):
    """nn.Dropout whose CPU mask comes from one uniform draw per element.

    On CPU, F.dropout draws its mask with bernoulli_, about twice the cost of uniform_ (2 AMD EPYC cores: 6 vs 3 ns
    per element; a Case C training step 1.24 -> 1.17 s). The result has the same distribution: each element is kept
    with probability 1 - p and scaled by 1 / (1 - p); only the random stream differs. On CUDA F.dropout's fused
    kernel is faster than anything composed here, so it is used as is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        noise = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * noise


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention. Dropout is applied to the block's output, not to the attention probabilities:
    dropout on the (B, H, T, T) probabilities forces scaled_dot_product_attention off its fused (flash) kernels onto
    the math path, which materialises them (Case C on 2 CPU cores: 66 vs 23 ms per layer, forward + backward; a
    training step 1.38 -> 1.17 s). It did not help either: configs/sample.json, 3 seeds, best val loss 3.2596 with
    it, 3.2575 without."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: "LayerCache | None" = None) -> torch.Tensor:
        B, T, D = x.shape
        H = self.num_heads
        q, k, v = (a.view(B, T, H, D // H).transpose(1, 2) for a in self.qkv(x).split(D, dim=2))
        causal = True
        if cache is not None:
            if T > 1 and cache.length:
                raise ValueError("a KV cache takes a whole prompt when empty, then one position at a time")
            k, v = cache.append(k, v)
            causal = T > 1      # one new position attends to every cached one
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))


class LayerCache:
    """Keys and values (B, H, context_length, d_head) of one layer, filled up to `length`.

    Buffers are allocated once at the full context length, so appending a position copies one slice instead of
    concatenating the whole cache (which would make a path of n steps cost O(n^2) copies)."""

    def __init__(self, batch: int, heads: int, capacity: int, d_head: int, dtype, device):
        self.k = torch.empty(batch, heads, capacity, d_head, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache full: {end} positions exceed context_length {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def select(self, index: torch.Tensor) -> "LayerCache":
        """A new cache whose row i is row index[i] of this one (a prompt's cache shared by all its sample paths)."""
        out = LayerCache.__new__(LayerCache)
        out.k, out.v, out.length = self.k.index_select(0, index), self.v.index_select(0, index), self.length
        return out


class KVCache(list):
    """One LayerCache per block; `length` positions cached."""

    @property
    def length(self) -> int:
        return self[0].length if self else 0

    def select(self, index: torch.Tensor) -> "KVCache":
        return KVCache(layer.select(index) for layer in self)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model), CausalSelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class MarketGPT(nn.Module):
    def __init__(self, cfg: ModelConfig, num_channels: int, num_assets: int, num_categories: int,
                 unknown: bool = False):
        """unknown: one extra row in the asset and the category table, ids num_assets and num_categories, for assets
        and categories the run never saw. The trainer fills them by asset dropout (training.asset_dropout)."""
        super().__init__()
        if num_channels < 1 or num_assets < 1 or num_categories < 1:
            raise ValueError(f"need num_channels, num_assets, num_categories >= 1, "
                             f"got {num_channels}, {num_assets}, {num_categories}")
        if cfg.d_model % cfg.num_heads:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by num_heads ({cfg.num_heads})")
        self.cfg, self.num_channels = cfg, num_channels
        self.unknown_asset = num_assets if unknown else None
        self.unknown_category = num_categories if unknown else None
        C, V, D = num_channels, cfg.vocab_size, cfg.d_model
        # Embedding tables: channel k's token v is row k*V + v of one table.
        self.tok_emb = nn.Embedding(C * V, D)
        self.cond_emb = nn.Embedding((C - 1) * V, D) if C > 1 else None   # channel C-1 never conditions anything
        self.asset_emb = nn.Embedding(num_assets + unknown, cfg.asset_embed_dim)
        self.category_emb = nn.Embedding(num_categories + unknown, cfg.category_embed_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, D)
        self.register_buffer("offsets", torch.arange(C) * V, persistent=False)
        self.meta_proj = nn.Linear(cfg.asset_embed_dim + cfg.category_embed_dim, D)
        # the log volatility scale of the candle each position predicts (tokenizer_scale.py), for scaled tokenizers
        self.scale_proj = nn.Linear(1, D) if cfg.scale_lambda > 0 else None
        # the weekday of each input candle (model.calendar): crypto trades on weekends, when it moves less
        self.weekday_emb = nn.Embedding(7, D) if cfg.calendar else None
        self.drop = Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.ln_f = nn.LayerNorm(D)
        # LayerNorm of h + conditioning: on real daily candles (276 assets, vocab 256, tiny model, 3 seeds) it lowers
        # the mean val CE of channels 1-3 by ~0.015 nats against no norm (open channel ~0.03); the close is unaffected.
        self.ln_head = nn.LayerNorm(D)
        self.head = nn.Parameter(torch.empty(C, D, V))   # channel k's output projection is head[k]
        self.gradient_checkpointing = False
        # divides the close channel's logits: a run's fitted calibration (calibration.py, set by run.load_run);
        # 1 in training and for runs without one. Not a weight: the checkpoint does not hold it.
        self.close_temperature = 1.0
        # then widens the close density by its category's width (calibration.width_map per category id, (K, V, V));
        # None in training and for runs without one. A buffer, so .to() moves it; not in the checkpoint.
        self.register_buffer("close_width", None, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.head, mean=0.0, std=0.02)
        for block in self.blocks:   # GPT-2: scale the projections into the residual stream by 1/sqrt(2L)
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * cfg.num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # --- trunk ------------------------------------------------------------------------------------
    def hidden(self, tokens: torch.Tensor, asset: torch.Tensor, category: torch.Tensor,
               cache: KVCache | None = None, scale: torch.Tensor | None = None,
               weekday: torch.Tensor | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, d_model) of candles tokens (B, T, C); h[:, t] sees candles <= t.
        scale (B, T): the scale input of each position (dataset.gather_inputs), required by a model with scale_proj;
        weekday (B, T) int: each candle's weekday (Monday 0), required by a model with a calendar, unused without.

        With a KV cache (see new_cache) the tokens continue the cached ones: an empty cache takes a whole prompt,
        after that one candle per call, at position cache.length."""
        B, T, C = tokens.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context_length:
            raise ValueError(f"sequence length {start + T} exceeds context_length {self.cfg.context_length}")
        if C != self.num_channels:
            raise ValueError(f"tokens have {C} channels, the model {self.num_channels}")
        meta = self.meta_proj(torch.cat([self.asset_emb(asset), self.category_emb(category)], dim=-1))   # (B, D)
        x = self.tok_emb(tokens + self.offsets).sum(2) + self.pos_emb.weight[start:start + T] + meta[:, None]
        if self.scale_proj is not None:
            if scale is None or scale.shape != tokens.shape[:2]:
                raise ValueError(f"the model takes a scale input shaped like the tokens' {tuple(tokens.shape[:2])}, got "
                                 f"{None if scale is None else tuple(scale.shape)}")
            x = x + self.scale_proj(scale.unsqueeze(-1).to(x.dtype))
        if self.weekday_emb is not None:
            if weekday is None or weekday.shape != tokens.shape[:2]:
                raise ValueError(f"the model takes a weekday input shaped like the tokens' {tuple(tokens.shape[:2])}, "
                                 f"got {None if weekday is None else tuple(weekday.shape)}")
            x = x + self.weekday_emb(weekday.long())
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            if cache is not None:
                x = block(x, cache[i])
            elif self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_f(x)

    def new_cache(self, batch: int) -> KVCache:
        """An empty KV cache for `batch` sequences of up to context_length candles, in the weights' dtype."""
        w = self.tok_emb.weight
        H = self.cfg.num_heads
        return KVCache(LayerCache(batch, H, self.cfg.context_length, self.cfg.d_model // H, w.dtype, w.device)
                       for _ in self.blocks)

    # --- conditional heads -------------------------------------------------------------------------
    def calibrate_close(self, logits: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """The close logits (B, ..., V) of rows of categories (B,) after the run's calibration: divided by the close
        temperature, then, with a close width, log(softmax @ the category's width map)."""
        if self.close_temperature != 1.0:
            logits = logits / self.close_temperature
        if self.close_width is None:
            return logits
        probs = torch.softmax(logits.float(), dim=-1)
        widened = torch.empty_like(probs)
        for k in torch.unique(category).tolist():       # one (V, V) map per category present, not one per row
            rows = category == k
            widened[rows] = probs[rows] @ self.close_width[k]
        return torch.log(widened.clamp_min(1e-30)).to(logits.dtype)

    def channel_logits(self, h: torch.Tensor, targets: torch.Tensor | None, category: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, n, V) of the next candle's channels 0..n-1 from hidden states h (B, T, D).

        targets (B, T, j) holds the first j channels of the next candle (all C in training); channel k is
        conditioned on targets[..., :k], so n = min(j + 1, C) channels are computable: None (j = 0) gives the close
        channel alone. Channel k's logits never depend on targets[..., k:] nor on other positions' targets.
        The close channel's are calibrated (calibrate_close) for the rows' categories (B,).
        """
        n = 1 if targets is None else min(targets.shape[-1] + 1, self.num_channels)
        z = h.unsqueeze(2)                                                       # (B, T, 1, D)
        if n > 1:
            e = self.cond_emb(targets[..., :n - 1] + self.offsets[:n - 1])       # (B, T, n-1, D)
            z = z + F.pad(e.cumsum(2), (0, 0, 1, 0))                             # exclusive cumsum: (B, T, n, D)
        z = self.ln_head(z)
        logits = torch.einsum("btcd,cdv->btcv", z, self.head[:n])
        if self.close_temperature != 1.0 or self.close_width is not None:
            logits[:, :, 0] = self.calibrate_close(logits[:, :, 0], category)
        return logits

    def next_channel_logits(self, h: torch.Tensor, previous: torch.Tensor, category: torch.Tensor,
                            calibrated: bool = True) -> torch.Tensor:
        """Logits (B, V) of channel k = previous.shape[1] of the next candle, from the last hidden states h (B, D)
        and that candle's channels 0..k-1 (B, k): the generation step of channel_logits, one channel at a time.
        The close logits calibrated for the rows' categories (B,); calibrated=False: as trained."""
        k = previous.shape[1]
        z = h
        if k:
            z = z + self.cond_emb(previous + self.offsets[:k]).sum(1)
        logits = self.ln_head(z) @ self.head[k]
        return self.calibrate_close(logits, category) if calibrated and k == 0 else logits

    def forward(self, tokens: torch.Tensor, asset: torch.Tensor, category: torch.Tensor,
                targets: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                scale: torch.Tensor | None = None,
                weekday: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss). With targets (B, T, C) = candle t+1 at each t: teacher-forced logits (B, T, C, V) and the
        mean cross-entropy over channels and the positions where mask (B, T) is true (all positions without a mask).
        Without targets: the close channel's logits (B, T, 1, V) (the other channels need the earlier channels of the
        next candle: see channel_logits / sample_next), loss None.

        The (B, T, C, V) logits are a permuted view of a contiguous (C, B, T, V) buffer, so the loss is computed in
        that layout (targets permuted the same way) without copying the logits.
        """
        logits = self.channel_logits(self.hidden(tokens, asset, category, scale=scale, weekday=weekday), targets,
                                     category)
        if targets is None:
            return logits, None
        V = logits.shape[-1]
        ce = F.cross_entropy(logits.permute(2, 0, 1, 3).reshape(-1, V).float(), targets.permute(2, 0, 1).reshape(-1),
                             reduction="none").view(self.num_channels, *targets.shape[:2])
        if mask is None:
            return logits, ce.mean()
        return logits, (ce * mask).sum() / (mask.sum().clamp(min=1) * self.num_channels)

    # --- bookkeeping ------------------------------------------------------------------------------
    def embedding_tables(self) -> list[nn.Embedding]:
        tables = (self.tok_emb, self.cond_emb, self.asset_emb, self.category_emb, self.pos_emb)
        return [m for m in tables if m is not None]

    def num_parameters(self, non_embedding: bool = False) -> int:
        """All parameters, or without the embedding tables (token, conditioning, asset, category, position); the
        output heads and the asset/category projection count as non-embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.embedding_tables())
        return n

    def configure_optimizer(self, weight_decay: float, learning_rate: float, betas: tuple[float, float] = (0.9, 0.95),
                            fused: bool | None = None) -> torch.optim.AdamW:
        """AdamW with weight decay on the >= 2-D weights (linear layers, heads), none on biases, LayerNorms and
        embedding tables. fused: None = use the fused kernel when every parameter is on CUDA; True = also on CPU
        (torch >= 2.4 has a fused CPU AdamW: one vectorised pass over the parameters instead of a loop of ~6
        element-wise ops per tensor; Case C on 2 CPU cores, 3.5 vs 61 ms per step); False = never."""
        embeddings = {id(m.weight) for m in self.embedding_tables()}
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
        no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
        devices = {p.device.type for p in params}
        use_fused = (fused is not False and "fused" in inspect.signature(torch.optim.AdamW).parameters
                     and (devices == {"cuda"} or (fused is True and devices <= {"cuda", "cpu"})))
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if use_fused else {}))


def flops_per_token(cfg: ModelConfig, n_params_non_embedding: int) -> float:
    """Training FLOPs (forward + backward) per position (one candle of C tokens): 6N for the weights plus
    12 * L * d_model * T for attention scores and values over the full context T (PaLM / nanoGPT estimate)."""
    return 6.0 * n_params_non_embedding + 12.0 * cfg.num_layers * cfg.d_model * cfg.context_length
