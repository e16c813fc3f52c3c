"""The model of an ensemble directory (see ensemble.py): member MarketGPTs called like one.

Kept apart from ensemble.py so that building the command line does not import torch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn


class Ensemble(nn.Module):
    """Member models called like one MarketGPT: forward gives the pool's log-probabilities as logits, sample_paths
    draws each path from one member (generate.sample_paths hands over to it)."""

    def __init__(self, members, names):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.names = list(names)
        first = members[0]
        self.cfg, self.num_channels = first.cfg, first.num_channels
        self.unknown_asset, self.unknown_category = first.unknown_asset, first.unknown_category

    @property
    def tok_emb(self):
        """The first member's token table: where the weights live (Forecaster.device) and their dtype."""
        return self.members[0].tok_emb

    def forward(self, tokens, asset, category, targets=None, mask=None, **inputs):
        """(log-probabilities (B, T, n, V) of the pool, mean cross-entropy or None): see the module docstring.
        inputs: scale and weekday (dataset.gather_inputs), each member takes what it uses."""
        logp = torch.stack([torch.log_softmax(m(tokens, asset, category, targets, **inputs)[0].float(), dim=-1)
                            for m in self.members])                                     # (M, B, T, n, V)
        if targets is None:
            return torch.logsumexp(logp, dim=0) - math.log(len(self.members)), None
        n = logp.shape[3]
        hit = logp.gather(-1, targets[..., :n].unsqueeze(0).unsqueeze(-1).expand(len(self.members), -1, -1, -1, 1))
        hit = hit.squeeze(-1)                                                           # (M, B, T, n)
        before = torch.log_softmax(hit.cumsum(3) - hit, dim=0)    # member weights given the channels before
        pooled = torch.logsumexp(before.unsqueeze(-1) + logp, dim=0)
        ce = -pooled.gather(-1, targets[..., :n].unsqueeze(-1)).squeeze(-1).mean(-1)      # (B, T)
        loss = ce.mean() if mask is None else (ce * mask).sum() / mask.sum().clamp(min=1)
        return pooled, loss

    def sample_paths(self, prompts, horizon, num_samples, seed=0, temperature=None, top_p=None, max_batch=None,
                     use_cache=True, on_step=None, path_scale=None):
        """generate.sample_paths with each path from one member: see the module docstring."""
        from .generate import sample_paths

        M = len(self.members)
        owners = [np.random.default_rng([seed, p.key, M]).permutation(num_samples) % M for p in prompts]
        out = [np.empty((num_samples, horizon, self.num_channels), dtype=np.int64) for _ in prompts]
        for m, member in enumerate(self.members):
            share = len(range(m, num_samples, M))
            if not share or not prompts:
                continue
            member_seed = int(np.random.SeedSequence([seed, m]).generate_state(1, np.uint64)[0] >> 1)
            paths = sample_paths(member, prompts, horizon, share, member_seed, temperature, top_p, max_batch,
                                 use_cache, on_step, path_scale)
            for i, drawn in enumerate(paths):
                out[i][owners[i] == m] = drawn
        return out
