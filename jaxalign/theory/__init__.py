"""Closed-form theory of exponential tilting for memoryless models with linear rewards.

Pure functions of ``(lm, reward, scalar...)``; vmap over the scalar arguments, e.g.
``jax.vmap(kl, in_axes=(None, None, 0))(lm, reward, lams)``.  See ``THEORY.md`` §1
for the mathematics.  Conventions: ``lam`` is the tilt (inverse temperature, the RLHF
``beta = 1/lam``), ``n = lm.length``; "per-token" quantities are for one token,
"sequence" quantities for the whole sequence (``n`` times the per-token value).

Numerics.  Everything is computed from the per-token log-ratio
``ell(x) = log(p_lam(x) / p(x))`` in forms whose terms never cancel (e.g.
``KL = sum_x p(x) [1 - e^ell (1 - ell)]`` with a Taylor series for small ``ell``), so
results are accurate to a few ulps relative in float64 from ``lam = 1e-8`` to
``lam = 1e4``.  Zero-probability tokens are outside the support: their rewards never
enter ``r_max``, ``r_min`` or any sum, however large.  ``lam = ±inf`` is accepted
where the limit is meaningful (the tilt then conditions on the top/bottom reward
class).  Out-of-domain traced values give NaN or ``inf``, never an exception.

Layout: ``_tilt`` (the tilt core, solvers and kernels), ``_frontier`` (the tilt and
its KL–reward frontier), ``_large_deviations`` (rate function, SCGF, best-of-N
asymptotics), ``_renyi`` (Rényi divergence and cross-entropy), ``_bounds`` (KL and
reward bounds) and ``_report`` (everything at one tilt, as data).
"""

from jaxalign._types import adopt_public_names
from jaxalign.theory._bounds import (
    best_of_n_kl_bound,
    hoeffding_variance,
    subgaussian_reward_bound,
)
from jaxalign.theory._frontier import (
    covariance_gain,
    cumulants,
    expected_reward,
    jeffreys,
    jeffreys_gain,
    kl,
    lam_for_kl,
    log_mgf,
    max_kl,
    optimal_reward,
    reverse_kl,
    tilt,
)
from jaxalign.theory._large_deviations import (
    best_of_n_asymptotic_reward,
    rate_function,
    scgf,
    scgf_renyi,
    scgf_renyi_divergence,
)
from jaxalign.theory._renyi import renyi_cross_entropy, renyi_divergence
from jaxalign.theory._report import report

__all__ = [
    "log_mgf",
    "cumulants",
    "tilt",
    "kl",
    "reverse_kl",
    "jeffreys",
    "max_kl",
    "expected_reward",
    "lam_for_kl",
    "optimal_reward",
    "rate_function",
    "scgf",
    "scgf_renyi",
    "scgf_renyi_divergence",
    "renyi_divergence",
    "renyi_cross_entropy",
    "best_of_n_asymptotic_reward",
    "best_of_n_kl_bound",
    "subgaussian_reward_bound",
    "hoeffding_variance",
    "jeffreys_gain",
    "covariance_gain",
    "report",
]

# The public names are documented (and doctested) as members of this package.
adopt_public_names(globals())
