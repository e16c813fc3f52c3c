import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from marketgpt.config import ModelConfig
from marketgpt.generate import Prompt, sample_paths
from marketgpt.model import MarketGPT, flops_per_token

C = 4


def tiny(dropout: float = 0.0, **kw) -> ModelConfig:
    base = dict(vocab_size=16, context_length=12, d_model=32, num_layers=2, num_heads=4, d_ff=64, dropout=dropout,
                asset_embed_dim=8, category_embed_dim=4)
    base.update(kw)
    return ModelConfig(**base)


def make(cfg=None, num_assets=3, num_categories=2, seed=0) -> MarketGPT:
    torch.manual_seed(seed)
    return MarketGPT(cfg or tiny(), C, num_assets, num_categories)


def batch(cfg, B=3, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    T = T or cfg.context_length
    tokens = torch.randint(0, cfg.vocab_size, (B, T, C), generator=g)
    targets = torch.randint(0, cfg.vocab_size, (B, T, C), generator=g)
    asset = torch.randint(0, 3, (B,), generator=g)
    category = torch.randint(0, 2, (B,), generator=g)
    return tokens, asset, category, targets


def expected_params(cfg: ModelConfig, channels: int, assets: int, categories: int) -> tuple[int, int]:
    """(total, non-embedding) counted from the architecture description, independently of the module tree."""
    d, f, V, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_layers
    embeddings = (channels * V * d + (channels - 1) * V * d + assets * cfg.asset_embed_dim
                  + categories * cfg.category_embed_dim + cfg.context_length * d)
    block = (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (2 * d) + (d * f + f) + (f * d + d)
    rest = (cfg.asset_embed_dim + cfg.category_embed_dim) * d + d + L * block + 2 * d + 2 * d + channels * d * V
    return embeddings + rest, rest


# --- shapes and loss ------------------------------------------------------------------------------
def test_shapes_and_loss_is_mean_cross_entropy():
    cfg = tiny()
    model = make(cfg)
    tokens, asset, category, targets = batch(cfg)
    logits, loss = model(tokens, asset, category, targets)
    assert logits.shape == (3, cfg.context_length, C, cfg.vocab_size) and logits.dtype == torch.float32
    manual = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), targets.reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-6)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5   # near uniform at init
    assert model.hidden(tokens, asset, category).shape == (3, cfg.context_length, cfg.d_model)


def test_without_targets_returns_the_close_channel_only():
    cfg = tiny()
    model = make(cfg).eval()
    tokens, asset, category, targets = batch(cfg, T=7)
    close, loss = model(tokens, asset, category)
    assert loss is None and close.shape == (3, 7, 1, cfg.vocab_size)
    full, _ = model(tokens, asset, category, targets)
    assert torch.allclose(close[:, :, 0], full[:, :, 0], atol=1e-6)
    partial = model.channel_logits(model.hidden(tokens, asset, category), targets[..., :2], category)
    assert partial.shape == (3, 7, 3, cfg.vocab_size)
    assert torch.allclose(partial, full[:, :, :3], atol=1e-6)


def test_context_longer_than_context_length_is_rejected():
    cfg = tiny()
    model = make(cfg)
    tokens, asset, category, _ = batch(cfg, T=cfg.context_length + 1)
    with pytest.raises(ValueError, match="context_length"):
        model(tokens, asset, category)


def test_bf16_autocast_runs():
    cfg = tiny()
    model = make(cfg)
    tokens, asset, category, targets = batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(tokens, asset, category, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- causality ------------------------------------------------------------------------------------
def test_logits_do_not_depend_on_future_candles():
    cfg = tiny()
    model = make(cfg).eval()
    tokens, asset, category, targets = batch(cfg)
    base, _ = model(tokens, asset, category, targets)
    for t in (0, 4, cfg.context_length - 2):
        changed = tokens.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 5) % cfg.vocab_size
        out, _ = model(changed, asset, category, targets)
        assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:], atol=1e-3)


def test_channel_k_depends_only_on_earlier_target_channels_at_its_own_position():
    cfg = tiny()
    model = make(cfg).eval()
    tokens, asset, category, targets = batch(cfg)
    base, _ = model(tokens, asset, category, targets)
    t = 5
    for k in range(C):
        changed = targets.clone()
        changed[:, t, k:] = (changed[:, t, k:] + 7) % cfg.vocab_size
        out, _ = model(tokens, asset, category, changed)
        assert torch.allclose(out[:, t, :k + 1], base[:, t, :k + 1], atol=1e-5)
        if k + 1 < C:   # later channels do see target channel k
            assert not torch.allclose(out[:, t, k + 1:], base[:, t, k + 1:], atol=1e-3)
        others = [s for s in range(cfg.context_length) if s != t]
        assert torch.allclose(out[:, others], base[:, others], atol=1e-5)


# --- learning -------------------------------------------------------------------------------------
def test_learns_a_periodic_pattern_per_asset():
    torch.manual_seed(0)
    V, A, P, T, B = 16, 4, 5, 16, 32
    cfg = ModelConfig(vocab_size=V, context_length=T, d_model=32, num_layers=2, num_heads=2, d_ff=64, dropout=0.0,
                      asset_embed_dim=8, category_embed_dim=4)
    model = MarketGPT(cfg, C, A, 2)
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, V, (A, P, C), generator=g)    # each asset repeats its own 5 candles
    optimizer = model.configure_optimizer(weight_decay=0.0, learning_rate=3e-3)
    for _ in range(300):
        asset = torch.randint(0, A, (B,), generator=g)
        phase = torch.randint(0, P, (B,), generator=g)
        seq = pattern[asset[:, None], (phase[:, None] + torch.arange(T + 1)) % P]
        _, loss = model(seq[:, :-1], asset, asset % 2, seq[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    # and it continues the pattern by itself, greedily, with the KV cache, past the context length (re-primed)
    seq = pattern[asset[:, None], (phase[:, None] + torch.arange(T + T)) % P]
    prompts = [Prompt(seq[i, :T].numpy(), int(asset[i]), int(asset[i]) % 2, i) for i in range(B)]
    out = sample_paths(model, prompts, T, 1, temperature=0)
    assert all(np.array_equal(out[i][0], seq[i, T:].numpy()) for i in range(B))


# --- sampling -------------------------------------------------------------------------------------
def greedy_by_teacher_forcing(model, tokens, asset, category):
    """Argmax decoding of the next candle through forward(): fill the last target channel by channel."""
    B, T, _ = tokens.shape
    targets = torch.zeros(B, T, C, dtype=torch.long)
    for k in range(C):
        logits, _ = model(tokens, asset, category, targets)
        targets[:, -1, k] = logits[:, -1, k].argmax(-1)
    return targets[:, -1]


def test_greedy_sampling_is_the_argmax_of_each_conditional_head_and_restores_the_mode():
    cfg = tiny(dropout=0.2)
    model = make(cfg)
    tokens, asset, category, _ = batch(cfg, B=5, T=9)
    prompts = [Prompt(tokens[i].numpy(), int(asset[i]), int(category[i]), i) for i in range(5)]
    model.train()
    drawn = sample_paths(model, prompts, 1, 3, seed=3)
    assert model.training
    assert all(p.shape == (3, 1, C) and p.min() >= 0 and p.max() < cfg.vocab_size for p in drawn)
    greedy = np.stack([p[0, 0] for p in sample_paths(model, prompts, 1, 1, temperature=0)])
    assert np.array_equal(greedy, np.stack([p[0, 0] for p in sample_paths(model, prompts, 1, 1, top_p=1e-9)]))
    model.eval()
    assert np.array_equal(greedy, greedy_by_teacher_forcing(model, tokens, asset, category).numpy())


# --- training machinery ---------------------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = tiny(dropout=0.1)
    tokens, asset, category, targets = batch(cfg)
    grads = []
    for flag in (False, True):
        model = make(cfg).train()
        model.gradient_checkpointing = flag
        torch.manual_seed(42)
        _, loss = model(tokens, asset, category, targets)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_configure_optimizer_groups():
    model = make()
    opt = model.configure_optimizer(weight_decay=0.1, learning_rate=1e-3)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert not ids(decay) & ids(no_decay)
    assert ids(decay) | ids(no_decay) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in ids(decay)} >= {"head", "blocks.0.attn.qkv.weight", "meta_proj.weight"}
    for name in ("tok_emb.weight", "cond_emb.weight", "pos_emb.weight", "asset_emb.weight", "ln_f.weight",
                 "blocks.0.mlp.fc.bias"):
        assert name in {names[i] for i in ids(no_decay)}
    assert not opt.defaults.get("fused")   # CPU


def test_parameter_counts_and_flops():
    cfg = tiny()
    model = make(cfg)
    total, non_emb = model.num_parameters(), model.num_parameters(non_embedding=True)
    assert total == sum(p.numel() for p in model.parameters())
    assert (total, non_emb) == expected_params(cfg, C, 3, 2)
    assert 0 < non_emb < total
    assert flops_per_token(cfg, non_emb) == 6 * non_emb + 12 * cfg.num_layers * cfg.d_model * cfg.context_length


CASES = {   # DESIGN.md section 1; C uses the ModelConfig defaults for the asset/category embeddings
    "A": (dict(vocab_size=4096, context_length=512, d_model=768, num_layers=12, num_heads=12, d_ff=3072,
               asset_embed_dim=64, category_embed_dim=32), 600, 5),
    "B": (dict(vocab_size=2048, context_length=256, d_model=512, num_layers=8, num_heads=8, d_ff=2048,
               asset_embed_dim=32, category_embed_dim=16), 100, 4),
    "C": (dict(vocab_size=1024, context_length=128, d_model=256, num_layers=6, num_heads=8, d_ff=1024), 20, 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_case_parameter_counts(case):
    kw, assets, categories = CASES[case]
    cfg = ModelConfig(**kw)
    with torch.device("meta"):   # shapes only: nothing allocated
        model = MarketGPT(cfg, C, assets, categories)
    total, non_emb = model.num_parameters(), model.num_parameters(non_embedding=True)
    print(f"case {case}: {total:,} parameters, {non_emb:,} non-embedding")
    assert (total, non_emb) == expected_params(cfg, C, assets, categories)
    d, L, V = cfg.d_model, cfg.num_layers, cfg.vocab_size
    trunk = 12 * L * d * d   # 4d^2 attention + 2*d*d_ff (d_ff = 4d) MLP per layer
    heads = C * d * V
    assert trunk + heads < non_emb < 1.02 * (trunk + heads) + (cfg.asset_embed_dim + cfg.category_embed_dim + 1) * d
    assert non_emb < total < non_emb + (2 * C - 1) * V * d + cfg.context_length * d + assets * 64 + categories * 32 + 1
