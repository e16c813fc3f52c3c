"""The model's one-step predictive density of the close-to-close log return, read off the close head.

The close head's probabilities are spread uniformly over each bin's width, and the two open-ended outer bins get the
exponential tails of TAIL_RULE. Evaluation scores this density (NLL, CRPS, PIT) and the forecaster reads its
quantiles, so both use this one definition.

A scaled tokenizer (tokenizer_scale.py) bins z = y / sigma: every method then takes the rows' sigma, and the density
of the raw return y is the z density over sigma (the Jacobian): NLL(y) = NLL(z) + log sigma, CRPS(y) = sigma
CRPS(z), the same PIT, quantiles and mean times sigma. sigma None: the bins are in return units.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import MarketGPTError

TAIL_RULE = ("each open-ended outer bin of the close channel gets an exponential tail hanging off its finite edge, "
             "whose median distance from the edge equals the training median's distance in that bin (the bin's "
             "decode value): scale s = d / ln 2, at least the width of the neighbouring inner bin")




class CloseDensity:
    """Piecewise-uniform density over the close channel's bins with exponential outer tails (TAIL_RULE)."""

    def __init__(self, inner_edges, values):
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

    def nll(self, probs, y, sigma=None):
        from .metrics import binned_nll
        if sigma is None:
            return binned_nll(probs, self.edges, y, self.tail_scale)
        return binned_nll(probs, self.edges, y / sigma, self.tail_scale) + np.log(sigma)

    def crps(self, probs, y, sigma=None):
        from .metrics import binned_crps
        if sigma is None:
            return binned_crps(probs, self.edges, y, self.tail_scale)
        return sigma * binned_crps(probs, self.edges, y / sigma, self.tail_scale)

    def cdf(self, probs, y, sigma=None):
        from .metrics import binned_cdf
        return binned_cdf(probs, self.edges, y if sigma is None else y / sigma, self.tail_scale)

    def ppf(self, probs, q, sigma=None):
        from .metrics import binned_ppf
        z = binned_ppf(probs, self.edges, q, self.tail_scale)
        return z if sigma is None else sigma * z

    def _bin_moments(self, gross: bool, sigma=None):
        """Per bin, E[y] (or E[exp y]) of its piece: a uniform inner bin, or an exponential tail of scale s hanging
        off the edge; (V,), or (n, V) for the rows' sigma (y = sigma z). E[exp y] of the upper tail is finite for
        sigma s < 1 only: a tail thinner than a 100% log move, which every daily close grid measured so far has by
        far (s ~ 0.01-0.1; scaled: sigma s ~ 0.02-0.2)."""
        a, b = self.edges[1:-2], self.edges[2:-1]
        lo, hi = self.edges[1], self.edges[-2]
        s_lo, s_hi = self.tail_scale
        if not gross:
            return np.concatenate([[lo - s_lo], (a + b) / 2, [hi + s_hi]])
        k = np.ones((1, 1)) if sigma is None else np.asarray(sigma, dtype=np.float64)[:, None]
        width = np.maximum(b - a, 1e-300)
        inner = np.where(b > a, (np.exp(k * b) - np.exp(k * a)) / (k * width), np.exp(k * a))
        upper = np.where(k * s_hi < 1, np.exp(k * hi) / np.maximum(1 - k * s_hi, 1e-300), np.inf)
        out = np.concatenate([np.exp(k * lo) / (1 + k * s_lo), inner, upper], axis=1)
        return out[0] if sigma is None else out

    def mean(self, probs, sigma=None):
        """E[y] under the density, per row of probs (n, V)."""
        m = np.asarray(probs, dtype=np.float64) @ self._bin_moments(False)
        return m if sigma is None else sigma * m

    def gross_mean(self, probs, sigma=None):
        """E[exp y] (the expected gross return C_{t+1}/C_t), per row of probs (n, V)."""
        probs = np.asarray(probs, dtype=np.float64)
        if sigma is None:
            return probs @ self._bin_moments(True)
        return (probs * self._bin_moments(True, sigma)).sum(1)


def close_density(tokenizer) -> CloseDensity:
    return CloseDensity.from_tokenizer(tokenizer)
