r"""First-order Markov language models: exact finite-n alignment with memory.

A :class:`MarkovLM` draws ``y_1 ~ μ`` and ``y_t | y_{t-1} = a ~ P(a, ·)``; the
reward is a :class:`jaxalign.LinearReward` ``R = Σ_t r(y_t)`` or a
:class:`jaxalign.PairReward` ``R = r_1(y_1) + Σ_{t≥2} r(y_{t-1}, y_t)``.  With
``μ_λ = μ∘e^{λ r_1}`` and ``P_λ(a, b) = P(a, b) e^{λ r(a, b)}`` (THEORY §11):

.. math::
    Z_n(\lambda) = E_P e^{\lambda R} = \mu_\lambda P_\lambda^{n-1} \mathbf 1,
    \qquad h_n = \mathbf 1,\ h_t = P_\lambda h_{t+1},

and the KL-optimal policy ``φ_λ ∝ P e^{λR}`` is the time-inhomogeneous chain
``φ(y_1 = a) = μ_λ(a) h_1(a) / Z_n``, ``φ(y_t = b | y_{t-1} = a) = P_λ(a, b)
h_t(b) / h_{t-1}(a)``.  Everything here runs in log space (``n = 10^4`` and beyond
without underflow), in the dtype of the inputs (float64 for the exact checks):

- :func:`log_partition`, :func:`log_messages`, :func:`tilt`,
  :func:`tilt_summary` (``log Z``, ``E R``, ``Var R``, KL), :func:`kl`,
  :func:`reverse_kl`, :func:`expected_reward`, :func:`max_kl`,
  :func:`lam_for_kl`, :func:`optimal_reward` (the finite-n frontier);
- :func:`chain_kl` and :func:`chain_expected_reward` for any two chains (forward
  recursions, terms that never cancel);
- :func:`myopic_tilt` (the token-level tilt) and :func:`lookahead_gap`;
  :func:`power_chain` (``P^α`` normalised, a twisted chain) and
  :func:`temperature_chain` (token-level temperature ``1/α``), compared by
  :func:`chain_kl`;
- :func:`reward_law`: the exact law of ``R`` for lattice rewards (a log-space
  DP over (state, reward)), the same :class:`jaxalign.exact.RewardLaw` as the
  memoryless law, so :func:`jaxalign.exact.policy_law` makes every policy of
  :mod:`jaxalign.policies` exact for Markov models;
- :func:`perron`, :func:`scgf`, :func:`cumulant_rates`, :func:`tilt_rates` (the
  per-token limits of :func:`tilt_summary` at a fixed λ), :func:`lam_for_kl_rate`,
  :func:`limit_reward_per_token`, :func:`rate_function`, :func:`renyi_rate`:
  Perron–Frobenius asymptotics (``Λ(λ) = log ρ(P_λ)``, the twisted chain
  ``Q_λ``, rates per token);
- :func:`sample`: token-level sampling of any chain (a scan over ``t``, one 32-bit
  word per token through the current row of ``P``: an alias table, or an integer
  CDF searched in ``O(log K)``).

A time-inhomogeneous chain (the tilt) is a :class:`MarkovLM` whose ``log_trans``
has shape ``(n - 1, K, K)``; every function accepts it.

Layout: ``_model`` (the chain), ``_finite`` (exact finite-n quantities), ``_law``
(the law of ``R``), ``_perron`` (asymptotics), ``_sample``.
"""

from jaxalign._types import adopt_public_names
from jaxalign.markov._finite import LookaheadGap as LookaheadGap
from jaxalign.markov._finite import chain_expected_reward as chain_expected_reward
from jaxalign.markov._finite import chain_kl as chain_kl
from jaxalign.markov._finite import expected_reward as expected_reward
from jaxalign.markov._finite import kl as kl
from jaxalign.markov._finite import lam_for_kl as lam_for_kl
from jaxalign.markov._finite import log_messages as log_messages
from jaxalign.markov._finite import log_partition as log_partition
from jaxalign.markov._finite import lookahead_gap as lookahead_gap
from jaxalign.markov._finite import max_kl as max_kl
from jaxalign.markov._finite import myopic_tilt as myopic_tilt
from jaxalign.markov._finite import optimal_reward as optimal_reward
from jaxalign.markov._finite import power_chain as power_chain
from jaxalign.markov._finite import reverse_kl as reverse_kl
from jaxalign.markov._finite import temperature_chain as temperature_chain
from jaxalign.markov._finite import tilt as tilt
from jaxalign.markov._finite import tilt_summary as tilt_summary
from jaxalign.markov._law import _log_matmul as _log_matmul
from jaxalign.markov._law import reward_law as reward_law
from jaxalign.markov._model import MarkovLM as MarkovLM
from jaxalign.markov._perron import PerronResult as PerronResult
from jaxalign.markov._perron import cumulant_rates as cumulant_rates
from jaxalign.markov._perron import lam_for_kl_rate as lam_for_kl_rate
from jaxalign.markov._perron import limit_reward_per_token as limit_reward_per_token
from jaxalign.markov._perron import perron as perron
from jaxalign.markov._perron import rate_function as rate_function
from jaxalign.markov._perron import renyi_rate as renyi_rate
from jaxalign.markov._perron import scgf as scgf
from jaxalign.markov._perron import tilt_rates as tilt_rates
from jaxalign.markov._sample import sample as sample

__all__ = [
    "MarkovLM",
    "LookaheadGap",
    "log_partition",
    "log_messages",
    "tilt",
    "tilt_summary",
    "kl",
    "reverse_kl",
    "expected_reward",
    "max_kl",
    "lam_for_kl",
    "optimal_reward",
    "chain_kl",
    "chain_expected_reward",
    "myopic_tilt",
    "lookahead_gap",
    "power_chain",
    "temperature_chain",
    "reward_law",
    "PerronResult",
    "perron",
    "scgf",
    "cumulant_rates",
    "limit_reward_per_token",
    "tilt_rates",
    "lam_for_kl_rate",
    "rate_function",
    "renyi_rate",
    "sample",
]

# The public names are documented (and doctested) as members of this package.
adopt_public_names(globals())
