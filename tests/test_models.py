"""Models and rewards: constructors against numpy, pytree behaviour, and every bad
input (of the models and of jaxalign.theory) raising a ValueError that names it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalign
from jaxalign import theory
from jaxalign.models import LinearReward, MemorylessLM, check_compatible

NAN, INF = float("nan"), float("inf")


# -- constructors against numpy ------------------------------------------------------


def test_from_probs_and_zero_tokens(x64):
    lm = MemorylessLM.from_probs([0.5, 0.0, 0.3, 0.2], length=7)
    assert lm.length == 7 and lm.num_tokens == 4
    np.testing.assert_allclose(lm.probs, [0.5, 0.0, 0.3, 0.2], rtol=1e-15)
    assert np.isneginf(np.asarray(lm.log_probs)[1])
    # Within the documented tolerance sqrt(eps): accepted and renormalised.
    lm = MemorylessLM.from_probs([0.5, 0.5 + 1e-9], length=1)
    assert float(jnp.sum(lm.probs)) == pytest.approx(1.0, abs=1e-15)


def test_other_constructors_against_numpy(x64, key):
    logits = np.array([0.3, -1.2, 2.0, -np.inf])
    expected = np.exp(logits - np.log(np.sum(np.exp(logits))))
    np.testing.assert_allclose(MemorylessLM.from_logits(logits, length=2).probs,
                               expected, rtol=1e-14)
    np.testing.assert_allclose(MemorylessLM.bernoulli(0.3, length=2).probs, [0.7, 0.3],
                               rtol=1e-15)
    np.testing.assert_allclose(MemorylessLM.uniform(5, length=2).probs, np.full(5, 0.2),
                               rtol=1e-15)
    ranks = np.arange(1, 7)
    zipf = ranks**-1.3 / np.sum(ranks**-1.3)
    np.testing.assert_allclose(MemorylessLM.zipf(6, 1.3, length=2).probs, zipf,
                               rtol=1e-14)
    lm = MemorylessLM.dirichlet(key, 8, 0.001, length=3)  # extreme but valid
    probs = np.asarray(lm.probs)
    assert np.all(np.isfinite(probs)) and probs.sum() == pytest.approx(1.0, abs=1e-12)
    again = MemorylessLM.dirichlet(jax.random.clone(key), 8, 0.001, length=3)
    np.testing.assert_array_equal(again.probs, probs)
    assert MemorylessLM.from_probs([0.5, 0.5], length=3.0).length == 3


def test_reward_sums_tokens(x64):
    r = LinearReward([0.5, -1.0, 2.0])
    tokens = np.array([[0, 1, 2, 2], [1, 1, 0, 2]])
    np.testing.assert_allclose(r(tokens), [3.5, 0.5], rtol=1e-15)


def test_pytree_roundtrip_jit_and_vmap(x64):
    lm = MemorylessLM.from_probs([0.5, 0.3, 0.2], length=4)
    r = LinearReward([0.0, 1.0, 2.0])
    leaves, treedef = jax.tree.flatten(lm)
    back = jax.tree.unflatten(treedef, leaves)
    assert back.length == 4 and np.array_equal(back.log_probs, lm.log_probs)
    assert jax.jit(lambda m: m)(lm).length == 4
    # Stacked models: unflatten skips validation, so a batch of models vmaps.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), lm,
                           MemorylessLM.from_probs([0.2, 0.3, 0.5], length=4))
    kls = jax.vmap(theory.kl, in_axes=(0, None, None))(stacked, r, 0.5)
    assert kls.shape == (2,)
    np.testing.assert_allclose(kls[0], theory.kl(lm, r, 0.5), rtol=1e-14)


# -- bad model inputs ------------------------------------------------------------------

M, R = MemorylessLM, LinearReward

BAD_MODELS = [
    (lambda: M.from_probs([0.5, -0.1, 0.6], length=2), r"probs.*non-negative"),
    (lambda: M.from_probs([0.5, NAN, 0.5], length=2), r"probs.*finite"),
    (lambda: M.from_probs([INF, 0.0], length=2), r"probs.*finite"),
    (lambda: M.from_probs([0.5, 0.3], length=2), r"probs must sum to 1.*0\.8"),
    (lambda: M.from_probs([[0.5, 0.5]], length=2), r"probs.*shape \(K,\)"),
    (lambda: M.from_probs(1.0, length=2), r"probs.*shape \(K,\)"),
    (lambda: M.from_probs([1.0], length=2), r"probs.*K >= 2"),
    (lambda: M.from_probs(["a", "b"], length=2), r"probs.*real"),
    (lambda: M.from_probs([0.5, 0.5], length=0), r"length.*>= 1.*0"),
    (lambda: M.from_probs([0.5, 0.5], length=-3), r"length.*-3"),
    (lambda: M.from_probs([0.5, 0.5], length=1.5), r"length.*integer.*1\.5"),
    (lambda: M.from_probs([0.5, 0.5], length="3"), r"length.*integer"),
    (lambda: M.from_probs([0.5, 0.5], length=True), r"length.*integer"),
    (lambda: M.from_logits([0.0, NAN], length=2), r"logits.*finite"),
    (lambda: M.from_logits([0.0, INF], length=2), r"logits.*finite"),
    (lambda: M.from_logits([-INF, -INF], length=2), r"logits.*finite entry"),
    (lambda: MemorylessLM(jnp.array([0.0, 0.0]), 2), r"log_probs.*normalised"),
    (lambda: MemorylessLM(jnp.array([0.0, NAN]), 2), r"log_probs.*finite"),
    (lambda: M.bernoulli(1.5, length=2), r"q.*\[0, 1\].*1\.5"),
    (lambda: M.uniform(1, length=2), r"num_tokens.*>= 2"),
    (lambda: M.zipf(4, -1.0, length=2), r"exponent.*>= 0"),
    (lambda: M.zipf(4, NAN, length=2), r"exponent.*finite"),
    (lambda: M.dirichlet(jax.random.PRNGKey(0), 3, length=2), r"key.*typed"),
    (lambda: M.dirichlet(0, 3, length=2), r"key.*typed"),
    (lambda: M.dirichlet(jax.random.key(0), 3, 0.0, length=2),
     r"concentration.*> 0"),
    (lambda: R([0.0, NAN]), r"token_rewards.*finite"),
    (lambda: R([0.0, INF]), r"token_rewards.*finite"),
    (lambda: R([[0.0, 1.0]]), r"token_rewards.*shape \(K,\)"),
    (lambda: R([1.0]), r"token_rewards.*K >= 2"),
]


@pytest.mark.parametrize("make, match", BAD_MODELS)
def test_bad_model_input_raises(x64, make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_k_mismatch_everywhere(x64):
    lm = MemorylessLM.from_probs([0.5, 0.3, 0.2], length=2)
    r = LinearReward([0.0, 1.0])
    with pytest.raises(ValueError, match=r"lm has K = 3.*reward has K = 2"):
        check_compatible(lm, r)
    with pytest.raises(ValueError, match="lm must be a MemorylessLM"):
        check_compatible(r, r)
    calls = [
        lambda: theory.log_mgf(lm, r, 0.1), lambda: theory.cumulants(lm, r, 2),
        lambda: theory.tilt(lm, r, 0.1), lambda: theory.kl(lm, r, 0.1),
        lambda: theory.reverse_kl(lm, r, 0.1), lambda: theory.jeffreys(lm, r, 0.1),
        lambda: theory.max_kl(lm, r), lambda: theory.expected_reward(lm, r, 0.1),
        lambda: theory.lam_for_kl(lm, r, 0.1), lambda: theory.optimal_reward(lm, r, 1),
        lambda: theory.rate_function(lm, r, 0.5), lambda: theory.scgf(lm, r, 0.1),
        lambda: theory.scgf_renyi(lm, r, 0.1),
        lambda: theory.scgf_renyi_divergence(lm, r, 0.1, 1.0),
        lambda: theory.best_of_n_asymptotic_reward(lm, r, 0.1),
        lambda: theory.hoeffding_variance(r, lm),
        lambda: theory.jeffreys_gain(lm, r, 1),
        lambda: theory.covariance_gain(lm, r, 0.1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="vocabulary size"):
            call()


# -- bad theory inputs ----------------------------------------------------------------


def _lm_r():
    return (MemorylessLM.from_probs([0.5, 0.3, 0.2], length=2),
            LinearReward([0.0, 1.0, 2.0]))


T = theory

BAD_THEORY = [
    (lambda lm, r: T.kl(lm, r, NAN), r"lam must not be NaN.*allowed"),
    (lambda lm, r: T.log_mgf(lm, r, jnp.array([0.1, 0.2])), r"lam.*scalar.*\(2,\)"),
    (lambda lm, r: T.tilt(lm, r, NAN), r"lam must not be NaN"),
    (lambda lm, r: T.cumulants(lm, r, 0), r"order.*>= 1.*0"),
    (lambda lm, r: T.cumulants(lm, r, 2.5), r"order.*integer"),
    (lambda lm, r: T.lam_for_kl(lm, r, -1.0), r"kl_budget must be >= 0.*-1"),
    (lambda lm, r: T.lam_for_kl(lm, r, NAN), r"kl_budget must not be NaN"),
    (lambda lm, r: T.optimal_reward(lm, r, -0.5), r"kl_budget must be >= 0"),
    (lambda lm, r: T.rate_function(lm, r, NAN), r"x must not be NaN"),
    (lambda lm, r: T.rate_function(lm, r, 0.5, INF), r"lam must be finite"),
    (lambda lm, r: T.scgf(lm, r, INF), r"t must be finite"),
    (lambda lm, r: T.scgf(lm, r, 0.1, NAN), r"lam must not be NaN"),
    (lambda lm, r: T.scgf_renyi_divergence(lm, r, 0.1, 0.0), r"lam must be non-zero"),
    (lambda lm, r: T.jeffreys_gain(lm, r, INF), r"lam must be finite"),
    (lambda lm, r: T.best_of_n_asymptotic_reward(lm, r, -0.1), r"delta.*>= 0"),
    (lambda lm, r: T.renyi_divergence([0.5, 0.5], [0.5, 0.5], -1.0),
     r"alpha must be >= 0"),
    (lambda lm, r: T.renyi_divergence([0.5, 0.5], [0.5, 0.5], NAN),
     r"alpha must not be NaN"),
    (lambda lm, r: T.renyi_divergence([0.5, 0.5], [0.2, 0.3, 0.5], 2.0),
     r"p and q must have the same shape"),
    (lambda lm, r: T.renyi_divergence([0.5, 0.6], [0.5, 0.5], 2.0),
     r"p must sum to 1"),
    (lambda lm, r: T.renyi_divergence([1.5, -0.5], [0.5, 0.5], 2.0),
     r"p must be finite and non-negative"),
    (lambda lm, r: T.renyi_cross_entropy([0.5, 0.5], [[0.5, 0.5]], 2.0),
     r"q must have shape \(K,\)"),
    (lambda lm, r: T.renyi_cross_entropy([0.5, 0.5], [0.5, 0.5], INF),
     r"alpha must be finite"),
    (lambda lm, r: T.best_of_n_kl_bound(), r"exactly one"),
    (lambda lm, r: T.best_of_n_kl_bound(2, 1.0), r"exactly one"),
    (lambda lm, r: T.best_of_n_kl_bound(num_candidates=0), r"num_candidates.*>= 1"),
    (lambda lm, r: T.best_of_n_kl_bound(num_candidates=0.5), r"num_candidates"),
    (lambda lm, r: T.best_of_n_kl_bound(num_candidates=True), r"num_candidates"),
    (lambda lm, r: T.best_of_n_kl_bound(log_num_candidates=-1.0),
     r"log_num_candidates must be >= 0"),
    (lambda lm, r: T.subgaussian_reward_bound(-1.0, 1.0), r"variance must be >= 0"),
    (lambda lm, r: T.subgaussian_reward_bound(1.0, NAN), r"kl_budget.*NaN"),
    (lambda lm, r: T.hoeffding_variance([0.0, 1.0]), r"reward must be a Linear"),
]


@pytest.mark.parametrize("call, match", BAD_THEORY)
def test_bad_theory_input_raises(x64, call, match):
    lm, r = _lm_r()
    with pytest.raises(ValueError, match=match):
        call(lm, r)


def test_traced_bad_values_give_nan_not_exceptions(x64):
    """Validation never branches on traced values: NaN in, NaN out under jit."""
    lm, r = _lm_r()
    assert math.isnan(float(jax.jit(theory.kl)(lm, r, NAN)))
    assert math.isnan(float(jax.jit(theory.scgf_renyi_divergence)(lm, r, 0.1, 0.0)))


def test_length_beyond_jax_integers_is_refused_at_construction():
    """A length JAX cannot hold as an integer failed deep inside a jitted closed
    form with an OverflowError (issue 15); it is refused where it enters."""
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="length must be <= 2147483647.*x64"):
            jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=3 * 10**9)
        with pytest.raises(ValueError, match="length must be <= 2147483647"):
            jaxalign.MarkovLM.sticky(np.array([0.5, 0.5]), 0.2, length=3 * 10**9)
    with jax.enable_x64(True):
        lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=3 * 10**9)
        assert float(T.kl(lm, jaxalign.LinearReward([0.0, 1.0]), 0.5)) > 0
        with pytest.raises(ValueError, match="length must be <= 9223372036854775807"):
            jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=10**30)


def test_cumulant_order_is_bounded_by_the_library():
    lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=4)
    reward = jaxalign.LinearReward([0.0, 1.0])
    with pytest.raises(ValueError, match="order must be an integer from 1 to 20"):
        T.cumulants(lm, reward, 21)
    assert T.cumulants(lm, reward, 20).shape == (20,)
