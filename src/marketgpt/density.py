"""The model's one-step predictive density of the close-to-close log return, read off the close head.

The close head's probabilities are spread uniformly over each bin's width, and the two open-ended outer bins get the
exponential tails of TAIL_RULE. Evaluation scores this density (NLL, CRPS, PIT) and the forecaster reads its
quantiles, so both use this one definition.
"""

from __future__ import annotations

import math

from .errors import MarketGPTError

TAIL_RULE = ("each open-ended outer bin of the close channel gets an exponential tail hanging off its finite edge, "
             "whose median distance from the edge equals the training median's distance in that bin (the bin's "
             "decode value): scale s = d / ln 2, at least the width of the neighbouring inner bin")




class CloseDensity:
    """Piecewise-uniform density over the close channel's bins with exponential outer tails (TAIL_RULE)."""

    def __init__(self, inner_edges, values):
        import numpy as np

        e = np.asarray(inner_edges, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        if e.ndim != 1 or v.shape != (e.size + 1,) or e.size < 1:
            raise MarketGPTError(f"close bins: expected V-1 edges and V values, got {e.shape} and {v.shape}")
        self.edges = np.concatenate([[-np.inf], e, [np.inf]])
        floor_lo = e[1] - e[0] if e.size > 1 else 1e-8
        floor_hi = e[-1] - e[-2] if e.size > 1 else 1e-8
        self.tail_scale = (max((e[0] - v[0]) / math.log(2), floor_lo), max((v[-1] - e[-1]) / math.log(2), floor_hi))

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "CloseDensity":
        return cls(tokenizer.bin_edges("close"), tokenizer.bin_values("close"))

    def nll(self, probs, y):
        from .metrics import binned_nll
        return binned_nll(probs, self.edges, y, self.tail_scale)

    def crps(self, probs, y):
        from .metrics import binned_crps
        return binned_crps(probs, self.edges, y, self.tail_scale)

    def cdf(self, probs, y):
        from .metrics import binned_cdf
        return binned_cdf(probs, self.edges, y, self.tail_scale)

    def ppf(self, probs, q):
        from .metrics import binned_ppf
        return binned_ppf(probs, self.edges, q, self.tail_scale)

    def _bin_moments(self, gross: bool):
        """Per bin, E[y] (or E[exp y]) of its piece: a uniform inner bin, or an exponential tail of scale s hanging
        off the edge. E[exp y] of the upper tail is finite for s < 1 only: a tail thinner than a 100% log move,
        which every daily close grid measured so far has by far (s ~ 0.01-0.1)."""
        import numpy as np

        a, b = self.edges[1:-2], self.edges[2:-1]
        lo, hi = self.edges[1], self.edges[-2]
        s_lo, s_hi = self.tail_scale
        if not gross:
            return np.concatenate([[lo - s_lo], (a + b) / 2, [hi + s_hi]])
        inner = np.where(b > a, (np.exp(b) - np.exp(a)) / np.maximum(b - a, 1e-300), np.exp(a))
        return np.concatenate([[np.exp(lo) / (1 + s_lo)], inner, [np.exp(hi) / (1 - s_hi) if s_hi < 1 else np.inf]])

    def mean(self, probs):
        """E[y] under the density, per row of probs (n, V)."""
        import numpy as np
        return np.asarray(probs, dtype=np.float64) @ self._bin_moments(False)

    def gross_mean(self, probs):
        """E[exp y] (the expected gross return C_{t+1}/C_t), per row of probs (n, V)."""
        import numpy as np
        return np.asarray(probs, dtype=np.float64) @ self._bin_moments(True)


def close_density(tokenizer) -> CloseDensity:
    return CloseDensity.from_tokenizer(tokenizer)
