"""Tests for jaxalign.exact against independent references."""

import itertools

import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import jaxalign
from jaxalign import exact


def _brute_force_law(probs, rewards, n):
    """Law of R by enumerating all K^n sequences (exact up to float rounding)."""
    probs = np.asarray(probs, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    law = {}
    for seq in itertools.product(range(len(probs)), repeat=n):
        value = round(float(sum(rewards[list(seq)])), 9)
        law[value] = law.get(value, 0.0) + float(np.prod(probs[list(seq)]))
    return law


def test_reward_law_tiny_brute_force(x64):
    probs, rewards, n = [0.1, 0.2, 0.3, 0.4], [0.0, 0.25, 0.75, 1.0], 5
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray(probs), length=n)
    law = exact.reward_law(lm, jaxalign.LinearReward(jnp.asarray(rewards)))
    ref = _brute_force_law(probs, rewards, n)
    pairs = zip(np.asarray(law.values), np.asarray(law.log_pmf), strict=True)
    got = {round(float(v), 9): float(np.exp(lp)) for v, lp in pairs}
    for v, p in got.items():
        assert p == pytest.approx(ref.get(v, 0.0), rel=1e-10, abs=0.0)
    assert set(ref) <= set(got)
    assert law.span == pytest.approx(0.25)


def test_reward_law_bernoulli_deep_tails_mpmath(x64):
    n, q = 1000, 0.3
    lm = jaxalign.MemorylessLM.from_probs(jnp.asarray([1 - q, q]), length=n)
    law = exact.reward_law(lm, jaxalign.LinearReward(jnp.asarray([0.0, 1.0])))
    log_pmf = np.asarray(law.log_pmf)
    mpmath.mp.dps = 40
    p1 = mpmath.mpf(float(lm.probs[1]))
    p0 = mpmath.mpf(float(lm.probs[0]))
    ref = np.array(
        [
            float(mpmath.log(mpmath.binomial(n, s)) + s * mpmath.log(p1)
                  + (n - s) * mpmath.log(p0))
            for s in range(n + 1)
        ]
    )
    # Relative 1e-9 on the probability = absolute 1e-9 on its log.
    np.testing.assert_allclose(log_pmf, ref, rtol=0, atol=1e-9)
    assert log_pmf[-1] == pytest.approx(n * float(mpmath.log(p1)), abs=1e-9)
