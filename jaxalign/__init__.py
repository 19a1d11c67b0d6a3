"""jaxalign: exact and Monte Carlo theory of LM alignment for memoryless models.

Modules (each with its own ``__all__``):

- :mod:`jaxalign.theory`: closed forms (log-MGF, cumulants, tilt, KL, rate function,
  Rényi quantities, best-of-N asymptotics, bounds).
- :mod:`jaxalign.policies`: every alignment policy as a reward transform
  ``π = p·g(R)`` (base, tilt, best-of-N, soft best-of-N, rejection, best-of-Poisson,
  χ²-regularised, win-rate optimal) in one registry.
- :mod:`jaxalign.exact`: exact finite-n laws of the reward, of every policy
  (``policy_law``), best-of-N for any N, tilted laws, tails.
- :mod:`jaxalign.markov`: first-order Markov models (:class:`MarkovLM`): exact
  finite-n tilts by backward messages, KL, the frontier, the myopic tilt's
  look-ahead gap, the exact law of ``R`` (so every policy is exact), sampling.
- :mod:`jaxalign.rl`: REINFORCE / PPO / GRPO / exact-gradient training of memoryless
  policies with exact (KL, reward) trajectories; KL-estimator ground truth.
- :mod:`jaxalign.proxy`: proxy rewards, reward hacking, ensembles.
- :mod:`jaxalign.sample`: exact-in-law Monte Carlo samplers (base, tilted, best-of-N,
  soft best-of-N, rejection), key-first and reproducible bit for bit.
- :mod:`jaxalign.estimators`: Monte Carlo estimators returning
  ``Estimate(value, stderr, num_samples)``.
- :mod:`jaxalign.config`, :mod:`jaxalign.sweep`, :mod:`jaxalign.store`: TOML sweep
  specifications, sharded multi-host sweeps, resumable run directories.
- :mod:`jaxalign.plots` (imported on use): figures from results.
"""

__version__ = "0.3.0"

from jaxalign import config as config
from jaxalign import estimators as estimators
from jaxalign import exact as exact
from jaxalign import markov as markov
from jaxalign import policies as policies
from jaxalign import proxy as proxy
from jaxalign import rl as rl
from jaxalign import sample as sample
from jaxalign import store as store
from jaxalign import sweep as sweep
from jaxalign import theory as theory
from jaxalign.markov import MarkovLM as MarkovLM
from jaxalign.models import LinearReward as LinearReward
from jaxalign.models import MemorylessLM as MemorylessLM
from jaxalign.models import PairReward as PairReward

__all__ = [
    "LinearReward",
    "MarkovLM",
    "MemorylessLM",
    "PairReward",
    "__version__",
    "config",
    "estimators",
    "exact",
    "markov",
    "policies",
    "proxy",
    "rl",
    "sample",
    "store",
    "sweep",
    "theory",
]
