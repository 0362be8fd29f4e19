"""Controlled decoding (CD): Q̂(s, z) = (1/N) Σ_i r(x, [y_<t, z, τ_i]),  τ_i ~ π_sft(· | s, z).

The same estimator as TQ* direct with the SFT model rolling out: it estimates Q^{π_sft}, the value of the
*unaligned* policy, which is the paper's main point of comparison.
"""

from __future__ import annotations

from .direct import DirectValue


class CDValue(DirectValue):
    """Rollouts of the SFT model itself, scored by the target reward."""

    policy = "sft"
