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
- :mod:`jaxalign.kl_gradients`: the exact expected gradient and per-sample
  covariance of every way of sampling a KL penalty (k1/k2/k3, reward or loss,
  token or sequence, on- or off-policy), memoryless and Markov, against
  ``∇KL(q‖p)`` and ``∇KL(p‖q)``.
- :mod:`jaxalign.rl`: REINFORCE / PPO / GRPO / exact-gradient training of memoryless
  policies with exact (KL, reward) trajectories; KL-estimator ground truth.
- :mod:`jaxalign.proxy`: proxy rewards, reward hacking, ensembles.
- :mod:`jaxalign.sample`: exact-in-law Monte Carlo samplers (base, tilted, best-of-N,
  soft best-of-N, rejection), key-first and reproducible bit for bit.
- :mod:`jaxalign.estimators`: Monte Carlo estimators returning
  ``Estimate(value, stderr, num_samples)``.
- :mod:`jaxalign.config`, :mod:`jaxalign.sweep`, :mod:`jaxalign.store`: TOML sweep
  specifications, sharded multi-host sweeps, resumable run directories.
- :mod:`jaxalign.plots`: figures from results.

Every submodule is imported on first use (``jaxalign.exact`` or ``from jaxalign import
exact``), so ``import jaxalign`` costs little more than ``import jax``.
"""

__version__ = "0.3.0"

import importlib as _importlib

# Everything is imported on first use (PEP 562): ``import jaxalign`` loads nothing
# heavy (not even JAX), so the CLI can catch a Ctrl-C during its first second, and
# ``jaxalign theory`` never pays for SciPy or the samplers it does not touch.
_SUBMODULES = ("config", "estimators", "exact", "kl_gradients", "markov", "policies",
               "proxy", "rl", "sample", "store", "sweep", "theory")
_CLASSES = {"LinearReward": "models", "MemorylessLM": "models",
            "PairReward": "models", "MarkovLM": "markov"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    elif name in _CLASSES:
        value = getattr(_importlib.import_module(f"{__name__}.{_CLASSES[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_CLASSES))


__all__ = [
    "LinearReward",
    "MarkovLM",
    "MemorylessLM",
    "PairReward",
    "__version__",
    "config",
    "estimators",
    "exact",
    "kl_gradients",
    "markov",
    "policies",
    "proxy",
    "rl",
    "sample",
    "store",
    "sweep",
    "theory",
]
