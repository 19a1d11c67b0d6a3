r"""Alignment policies as reward transforms, and the registry that holds them.

Every policy jaxalign studies reweights the base law by a function of the sequence
reward alone,

.. math::
    \pi(y) = p(y)\, g(R(y)), \qquad E_P[g(R)] = 1,

so its whole law of ``R`` follows from the base law of ``R``:
``q(s) = P(R = s)\, g(s)``, and every divergence is a reward-level sum
(``dπ/dP = g(R)``).  A policy is one small immutable object holding its
parameters, with one method that matters for the mathematics,
:meth:`Policy.log_pmf`, which maps the base law ``(values, log P)`` to the policy's
``log q`` in float64.  :func:`jaxalign.exact.policy_law` turns it into expectations,
KLs, Rényi divergences and win rates; :func:`jaxalign.sample.policy` samples it at
the token level (a policy's own sampler where it has one, else exact rejection from
the base with acceptance ``g(R)/max g``) or at the law level (inverting its exact
CDF).

The registry (:func:`register`, :func:`get`, :func:`names`) is the only place a
method name is looked up: the TOML grid keys a policy takes, how a grid expands
into points, its sweep rows and its plot style live on its class.  A new policy is
one subclass with ``@register``.

Registered policies (``name``: class):

- ``base``: :class:`Base`, ``g = 1``.
- ``tilted``: :class:`Tilted`, ``g ∝ e^{λR}`` (the KL-optimal policy).
- ``best_of_n``: :class:`BestOfN`, ``q(s) = F(s)^N - F(s^-)^N`` (ties uniform).
- ``soft_best_of_n``: :class:`SoftBestOfN`, selection ``∝ e^{R_i/T}`` among ``N``.
- ``rejection``: :class:`Rejection`, ``g ∝ 1\{R >= τ\}``.
- ``best_of_poisson``: :class:`BestOfPoisson`, best-of-``N`` with
  ``N - 1 ~ Poisson(μ)``.
- ``chi_squared``: :class:`ChiSquared`, the maximiser of ``E_π R - β χ²(π‖P)``.
- ``win_rate_optimal``: :class:`WinRateOptimal`, ``g ∝ e^{c u(R)}`` with the
  calibrated reward ``u(s) = F(s^-) + P(R = s)/2``.

Examples:
  >>> import jaxalign
  >>> from jaxalign import exact, policies
  >>> lm = jaxalign.MemorylessLM.bernoulli(0.5, length=1)
  >>> law = exact.policy_law(lm, jaxalign.LinearReward([0.0, 1.0]), policies.BestOfN(2))
  >>> float(law.expected_reward)
  0.75
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np

from jaxalign._numerics import log1mexp_of_exp, log_cdf_sf, lse

__all__ = [
    "ExactCurve",
    "GridKey",
    "Policy",
    "Base",
    "Tilted",
    "BestOfN",
    "SoftBestOfN",
    "Rejection",
    "BestOfPoisson",
    "ChiSquared",
    "WinRateOptimal",
    "register",
    "unregister",
    "get",
    "names",
    "setting_names",
]


# ------------------------------------------------------------------ grid keys


class GridKey(NamedTuple):
    """A TOML ``[grid]`` key a policy takes: its name, type, check and allowed text."""

    name: str
    kind: type  # int or float
    check: Callable[[Any], bool]
    allowed: str


LAM = GridKey("lam", float, lambda v: 0 <= v < math.inf, "finite numbers >= 0")
KL_BUDGET = GridKey(
    "kl_budget", float, lambda v: 0 <= v < math.inf,
    "finite sequence-level budgets >= 0")
DELTA = GridKey("delta", float, lambda v: 0 < v < math.inf,
                "finite per-token budgets > 0")
NUM_CANDIDATES = GridKey("num_candidates", int, lambda v: v >= 1, "integers N >= 1")
TEMPERATURE = GridKey("temperature", float, lambda v: 0 < v < math.inf,
                      "finite temperatures > 0")
THRESHOLD = GridKey("threshold", float, math.isfinite,
                    "finite sequence-reward thresholds")
POISSON_MEAN = GridKey("poisson_mean", float, lambda v: 0 <= v < math.inf,
                       "finite Poisson means >= 0")
BETA = GridKey("beta", float, lambda v: 0 < v < math.inf, "finite numbers > 0")
STRENGTH = GridKey("strength", float, lambda v: 0 <= v < math.inf,
                   "finite numbers >= 0")


# ------------------------------------------------------------------ checks


def _real(value, name: str, *, minimum: float | None = None, strict=False,
          allow_inf=False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if isinstance(value, bool) or math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if minimum is not None and (x < minimum or (strict and x == minimum)):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value!r}")
    return x


def _log_candidates(num_candidates, log_num_candidates):
    """``(N or None, log N)`` from exactly one of the two (checked by the exact
    best-of-N layer's own validation)."""
    from jaxalign.exact._best_of_n import _log_candidates as log_candidates

    log_n = log_candidates(num_candidates, log_num_candidates)
    if np.ndim(log_n) != 0:
        raise ValueError(
            f"a policy takes one N, got num_candidates={num_candidates!r}, "
            f"log_num_candidates={log_num_candidates!r}")
    return (None if num_candidates is None else int(num_candidates)), float(log_n)


# ------------------------------------------------------------------ law helpers


def _prob_below_and_at(log_pmf: np.ndarray):
    """``(F(s^-), P(R = s))`` as float64 arrays."""
    with np.errstate(divide="ignore"):
        lower = np.logaddexp.accumulate(log_pmf)
    return np.r_[0.0, np.exp(lower[:-1])], np.exp(log_pmf)


def calibrated_reward(log_pmf: np.ndarray) -> np.ndarray:
    """``u(s) = F(s^-) + P(R = s)/2``: the win rate of reward ``s`` against the base."""
    below, at = _prob_below_and_at(log_pmf)
    return below + 0.5 * at


def _normalise(log_q: np.ndarray) -> np.ndarray:
    return log_q - lse(log_q)


def _best_of_n_log_pmf(values, log_pmf, log_n: float) -> np.ndarray:
    from jaxalign import exact

    core = exact._bon_core(values, log_pmf, *exact._law_prep(log_pmf),
                           np.array([log_n]), 0.0, 0.0)
    return core[3][0]


# ------------------------------------------------------------------ the base class


class Policy:
    """An alignment policy ``π = p·g(R)``: subclass, decorate with :func:`register`.

    Subclasses are frozen dataclasses whose fields are the policy's parameters
    (validated in ``__post_init__``).  They define :meth:`log_pmf`, and may
    override the sampling hooks and the sweep hooks below.

    Class attributes:
      name: the method name in TOML configs and ``results.csv``.
      label: the legend label of its plots; ``colour`` (an Okabe–Ito name of
        :data:`jaxalign.plots.PALETTE`) and ``marker`` its plot style.
      strength_keys: ``[grid]`` keys that set its strength (a point per value of
        each); ``required_keys``: keys it needs besides (a point per value, crossed).
      compare_with_base: the sweep draws an independent base reward per sample and
        reports the Monte Carlo win rate.
      traced_fields: parameters its token sampler takes as traced values, so one
        compiled sweep program serves all their values (``lam``, ``temperature``,
        ``num_candidates``: integers arrive as uint32, the rest in the float
        dtype).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    colour: ClassVar[str] = "black"
    marker: ClassVar[str] = "o"
    strength_keys: ClassVar[tuple[GridKey, ...]] = ()
    required_keys: ClassVar[tuple[GridKey, ...]] = ()
    compare_with_base: ClassVar[bool] = True
    traced_fields: ClassVar[tuple[str, ...]] = ()
    derived_settings: ClassVar[tuple[str, ...]] = ()

    def unchecked_replace(self, **changes) -> Policy:
        """A copy with some fields replaced *without* validation: the constructor
        for traced values (a sweep's jitted block); use the class otherwise."""
        new = object.__new__(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, changes.get(f.name, getattr(self, f.name)))
        return new

    def check_token_sampling(self) -> None:
        """Raise ``ValueError`` when the policy's own token sampler cannot run it
        (e.g. ``N`` given only as a huge ``log N``)."""

    @property
    def has_token_sampler(self) -> bool:
        """Whether the policy samples tokens itself (else: rejection from the base)."""
        return type(self).sample_tokens is not Policy.sample_tokens

    # -- the mathematics ---------------------------------------------------------
    def log_pmf(self, values: np.ndarray, log_pmf: np.ndarray) -> np.ndarray:
        """The policy's ``log q(s)`` on the base law's support (float64 NumPy).

        Args:
          values: ``(M,)`` ascending reward values.
          log_pmf: ``(M,)`` normalised base log-probabilities ``log P(R = s)``.
        """
        raise NotImplementedError

    # -- sampling hooks ------------------------------------------------------------
    def sample_tokens(self, key, lm, reward, num_samples, *, first_index=0,
                      batch_size=None, return_tokens=False):
        """Token-level rewards (a ``SampleResult`` with ``return_tokens``) from a
        sampler of the policy's own, or ``None``: then :func:`jaxalign.sample.policy`
        rejects from the base model with acceptance ``g(R)/max g``."""
        return None

    def law_sampling(self, lm, reward, values, base_log_pmf):
        """``(values, log_pmf, log N)`` for the law-level draw ``F^{-N}(U)``: by
        default the policy's exact law with ``N = 1``."""
        return values, self.log_pmf(values, base_log_pmf), 0.0

    # -- sweep hooks ---------------------------------------------------------------
    @classmethod
    def grid_keys(cls) -> tuple[GridKey, ...]:
        """Every ``[grid]`` key this policy reads."""
        return cls.strength_keys + cls.required_keys

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The settings a point of this policy records: its grid keys, plus those
        :meth:`expand` derives (``log_num_candidates``)."""
        return tuple(key.name for key in cls.grid_keys()) + cls.derived_settings

    @classmethod
    def expand(cls, grid: Mapping[str, tuple], length: int) -> list[dict]:
        """The settings (``results.csv`` columns) of each point at ``length``."""
        out = [{}] if not cls.strength_keys else [
            {key.name: v} for key in cls.strength_keys for v in grid.get(key.name, ())
        ]
        for key in cls.required_keys:
            out = [dict(s, **{key.name: v}) for s in out for v in grid[key.name]]
        return out

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], lm, reward) -> Policy:
        """The policy of one point (settings from :meth:`expand`)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in fields})

    def sweep_values(self, lm, reward, settings: Mapping[str, Any], law) -> dict:
        """``{quantity: (exact or None, asymptotic or None)}`` overriding or adding
        to the rows the sweep derives from the exact law (closed forms, limits);
        ``law`` is the point's :class:`jaxalign.exact.PolicyLaw` (or ``None`` when
        the rewards have no lattice law)."""
        return {}

    # -- plot hooks ------------------------------------------------------------------
    @classmethod
    def exact_curve(cls, lm, reward, settings: list[Mapping[str, Any]],
                    num: int) -> ExactCurve | None:
        """The policy's exact :class:`ExactCurve` along its strength, up to a little
        beyond the strongest of ``settings`` (rows of a run), or ``None``."""
        return None

    @classmethod
    def annotation(cls, point: Mapping[str, Any]) -> str | None:
        """A short label written next to a point in figures, or ``None``."""
        return None


class ExactCurve(NamedTuple):
    """Exact values of a policy family along its strength (sequence level).

    Attributes:
      kl: ``(G,)`` ``KL(π‖P)``.
      expected_reward: ``(G,)`` ``E_π[R]``.
      win_rate: ``(G,)`` win rate against the base, ties counting one half.
    """

    kl: Any
    expected_reward: Any
    win_rate: Any


def _curve_of_laws(laws) -> ExactCurve:
    laws = list(laws)
    return ExactCurve(*(np.array([float(getattr(law, f)) for law in laws])
                        for f in ("kl", "expected_reward", "win_rate")))


_REGISTRY: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    """Class decorator: add a policy to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a policy needs a class attribute name, an identifier, got "
                         f"{name!r}")
    old = _REGISTRY.get(name)
    redefined = old is not None and (old.__module__, old.__qualname__) == (
        cls.__module__, cls.__qualname__)  # a notebook cell run again
    if old is not None and old is not cls and not redefined:
        raise ValueError(f"a policy named {name!r} is already registered "
                         f"({_REGISTRY[name].__qualname__})")
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a policy from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> type[Policy]:
    """The registered policy class called ``name``."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}; registered: {names()}") from None


def names() -> tuple[str, ...]:
    """Registered policy names, in registration order."""
    return tuple(_REGISTRY)


def setting_names() -> tuple[str, ...]:
    """Every setting a registered policy records per point, in registration order
    (the ``results.csv`` columns between ``sampling`` and ``quantity``)."""
    out: dict[str, None] = {}
    for cls in _REGISTRY.values():
        out.update(dict.fromkeys(cls.settings()))
    return tuple(out)


def _sample_model(key, model, reward, num_samples, first_index, batch_size,
                  return_tokens):
    """Token-level draws from a model itself (the base, or a tilt as a model)."""
    from jaxalign import sample

    kw = dict(first_index=first_index, batch_size=batch_size)
    r = sample.rewards(key, model, reward, num_samples, **kw)
    if not return_tokens:
        return r
    return sample.SampleResult(r, sample.tokens(key, model, num_samples, **kw))


def _frozen(cls):
    return dataclasses.dataclass(frozen=True)(cls)


# ------------------------------------------------------------------ policies


@register
@_frozen
class Base(Policy):
    """The base policy ``π = P`` (``g = 1``)."""

    name: ClassVar[str] = "base"
    label: ClassVar[str] = "base policy"
    marker: ClassVar[str] = "s"
    compare_with_base: ClassVar[bool] = False

    def log_pmf(self, values, log_pmf):
        return np.asarray(log_pmf, np.float64)

    def sample_tokens(self, key, lm, reward, num_samples, *, first_index=0,
                      batch_size=None, return_tokens=False):
        return _sample_model(key, lm, reward, num_samples, first_index, batch_size,
                             return_tokens)

    def sweep_values(self, lm, reward, settings, law):
        # The tilt at lam = 0, whose KL is exactly 0 (no limit to compare with).
        return dict(Tilted(0.0).sweep_values(lm, reward, {}, law),
                    kl_per_token=(0.0, None))


@register
@_frozen
class Tilted(Policy):
    r"""The KL-optimal policy ``Φ_λ ∝ P e^{λR}`` (``g = e^{λR - nΛ(λ)}``)."""

    name: ClassVar[str] = "tilted"
    label: ClassVar[str] = "tilted policy"
    colour: ClassVar[str] = "blue"
    marker: ClassVar[str] = "o"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (LAM, KL_BUDGET, DELTA)
    compare_with_base: ClassVar[bool] = False
    traced_fields: ClassVar[tuple[str, ...]] = ("lam",)

    lam: float

    def __post_init__(self):
        object.__setattr__(self, "lam", _real(self.lam, "lam"))

    def log_pmf(self, values, log_pmf):
        values = np.asarray(values, np.float64)
        with np.errstate(invalid="ignore"):
            shifted = log_pmf + self.lam * (values - values[0])
        return _normalise(np.where(np.isfinite(log_pmf), shifted, -np.inf))

    def sample_tokens(self, key, lm, reward, num_samples, *, first_index=0,
                      batch_size=None, return_tokens=False):
        # The tilt is a model of its own: sample it as the base (Memoryless: i.i.d.
        # tokens from p_λ, exactly sample.tilted).
        return _sample_model(key, lm.tilt(reward, self.lam), reward, num_samples,
                             first_index, batch_size, return_tokens)

    def law_sampling(self, lm, reward, values, base_log_pmf):
        # The law of the tilted model itself.
        law = lm.tilt(reward, self.lam).reward_law(reward)
        return np.asarray(law.values), np.asarray(law.log_pmf), 0.0

    @classmethod
    def from_settings(cls, settings, lm, reward):
        if settings.get("lam") is not None:
            return cls(settings["lam"])
        budget = settings.get("kl_budget")
        if budget is None:
            budget = settings["delta"] * lm.length
        top = float(lm.max_kl(reward))
        if not budget < top:
            raise ValueError(
                f"the KL budget {budget:.6g} is not below the maximum "
                f"-n log p(A_max) = {top:.6g} of this model; allowed: < {top:.6g}")
        return cls(float(lm.lam_for_kl(reward, budget)))

    def sweep_values(self, lm, reward, settings, law):
        r"""Exact values from :meth:`tilt_summary`; asymptotic ones from the model's
        :meth:`tilt_rates` (``Λ'``, ``Λ''`` and the KL rate ``λΛ' - Λ``: for a chain
        ``Λ = log ρ(P_λ)``, for i.i.d. tokens the per-token values themselves) at
        the point's ``λ``, or at ``λ_δ`` of the per-token budget ``δ`` (then the KL
        limit is ``δ`` itself); none where the model has no rates (a chain that is
        not primitive, or time-inhomogeneous)."""
        n = lm.length
        closed = lm.tilt_summary(reward, self.lam)
        mean, var = float(closed.mean) / n, float(closed.variance) / n
        kl = float(closed.kl) / n
        delta = settings.get("delta")
        try:
            lam = lm.lam_for_kl_rate(reward, delta) if delta else self.lam
            rates = lm.tilt_rates(reward, lam)
        except ValueError:
            return {"reward_per_token": (mean, None), "variance_per_token": (var, None),
                    "kl_per_token": (kl, None)}
        return {"reward_per_token": (mean, float(rates.mean)),
                "variance_per_token": (var, float(rates.variance)),
                "kl_per_token": (kl, delta if delta else float(rates.kl))}


def _limit_reward(lm, reward, delta) -> float | None:
    """The model's own ``lim_n E_Φ[R]/n`` at a per-token budget ``delta``, or
    ``None`` (no ``delta``, or a model whose limit is not defined: a chain that is
    not primitive)."""
    if delta is None:
        return None
    try:
        return float(lm.limit_reward_per_token(reward, delta))
    except ValueError:
        return None


class _Candidates:
    """Shared by the policies that draw N candidates."""

    derived_settings: ClassVar[tuple[str, ...]] = ("log_num_candidates",)

    def check_token_sampling(self) -> None:
        if self.num_candidates is None:
            raise ValueError(
                f"N = e^{self.log_num_candidates:.4g} is too large for token-level "
                'sampling; sample at the law level (level="law", sampling = "law")')


def _selected(result, return_tokens):
    from jaxalign import sample

    if return_tokens:
        return sample.SampleResult(result.reward, result.tokens)
    return result.reward


def _expand_candidates(grid, length, with_delta=True):
    out = []
    for v in grid.get("delta", ()) if with_delta else ():
        # N = ceil(e^{n delta}); kept as log N once N no longer fits an int64.
        log_n = length * v
        n_cand = math.ceil(math.exp(log_n)) if log_n < 43 else None
        out.append({"delta": v, "num_candidates": n_cand,
                    "log_num_candidates": log_n if n_cand is None
                    else math.log(n_cand)})
    for v in grid.get("num_candidates", ()):
        out.append({"num_candidates": v, "log_num_candidates": math.log(v)})
    return out


@register
@_frozen
class BestOfN(_Candidates, Policy):
    r"""Best-of-N with uniform ties: ``q(s) = F(s)^N - F(s^-)^N``.

    Give ``num_candidates=N`` (any Python integer) or ``log_num_candidates=log N``
    (for ``N`` beyond integers, e.g. ``e^{1000}``).  ``F^N`` is evaluated as
    ``exp(-exp(log N + log(-log F)))``, so only ``log N`` is ever formed.
    """

    name: ClassVar[str] = "best_of_n"
    label: ClassVar[str] = "best-of-N"
    colour: ClassVar[str] = "vermillion"
    marker: ClassVar[str] = "D"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (NUM_CANDIDATES, DELTA)
    traced_fields: ClassVar[tuple[str, ...]] = ("num_candidates", "log_num_candidates")

    num_candidates: int | None = None
    log_num_candidates: float | None = None

    def __post_init__(self):
        n, log_n = _log_candidates(self.num_candidates, self.log_num_candidates)
        object.__setattr__(self, "num_candidates", n)
        object.__setattr__(self, "log_num_candidates", log_n)

    def log_pmf(self, values, log_pmf):
        return _best_of_n_log_pmf(values, log_pmf, self.log_num_candidates)

    def sample_tokens(self, key, lm, reward, num_samples, *, first_index=0,
                      batch_size=None, return_tokens=False):
        from jaxalign import sample

        res = sample.best_of_n(key, lm, reward, self.num_candidates, num_samples,
                               first_index=first_index, batch_size=batch_size,
                               return_tokens=return_tokens)
        return _selected(res, return_tokens)

    def law_sampling(self, lm, reward, values, base_log_pmf):
        # The maximum of N base draws directly: F^N inverted in log space.
        return values, base_log_pmf, self.log_num_candidates

    @classmethod
    def expand(cls, grid, length):
        return _expand_candidates(grid, length)

    @classmethod
    def exact_curve(cls, lm, reward, settings, num):
        from jaxalign import exact

        log_max = max(s["log_num_candidates"] for s in settings)
        grid = np.linspace(0.0, 1.1 * log_max + 0.1, num)
        res = exact.best_of_n_from_law(lm.reward_law(reward), log_num_candidates=grid)
        return ExactCurve(res.kl, res.expected_reward, res.win_rate)

    @classmethod
    def annotation(cls, point):
        if point.get("num_candidates") is not None:
            return f"N={point['num_candidates']}"
        return f"N=e^{point['log_num_candidates']:.3g}"

    @classmethod
    def from_settings(cls, settings, lm, reward):
        if settings.get("num_candidates") is not None:
            return cls(settings["num_candidates"])
        return cls(log_num_candidates=settings["log_num_candidates"])

    def sweep_values(self, lm, reward, settings, law):
        from jaxalign import theory

        log_n = self.log_num_candidates
        bound = float(theory.best_of_n_kl_bound(log_num_candidates=log_n))
        out = {"kl_bound_per_token": (bound / lm.length, None)}
        delta = settings.get("delta")
        x_star = _limit_reward(lm, reward, delta)
        if x_star is not None:
            out["reward_per_token"] = (None, x_star)
            out["kl_per_token"] = (None, delta)
            if law is not None:
                # KL(pi_BoN || Phi) = KL(pi_BoN || P) - lam E[R] + log E_P e^{lam R}.
                lam = float(lm.lam_for_kl(reward, delta * lm.length))
                v = np.asarray(law.values, np.float64)
                log_mgf = float(lse(np.asarray(law.base_log_pmf, np.float64) + lam * v))
                to_tilt = float(law.kl) - lam * float(law.expected_reward) + log_mgf
                out["kl_to_tilted_per_token"] = (to_tilt / lm.length, 0.0)
        return out


def _soft_log_weight(values, log_pmf, log_n: float, temperature: float,
                     step: float = 0.2, max_work: float = 4e8) -> np.ndarray:
    r"""``log g(s)`` of soft best-of-N by a one-dimensional integral per support point.

    With ``X = e^{(R - v_max)/T} ∈ (0, 1]``, ``a = e^{(s - v_max)/T}`` and
    ``S`` a sum of ``N - 1`` i.i.d. copies of ``X``,

    .. math::
        g(s) = N\, E\Big[\frac{a}{a + S}\Big]
             = N \int_0^\infty a\, e^{-ta}\, \varphi(t)^{N-1}\, dt,
        \qquad \varphi(t) = E\, e^{-tX},

    integrated over ``t = e^u`` by the trapezoidal rule in ``u`` (step ``1/5``),
    which converges geometrically for these analytic integrands (measured
    against enumeration: relative error ~e^{-9.3/step}, 4e-8 at step 1/2, 1e-11
    at 0.35, at the 1e-13 floor of float64 from 1/4 down); the integrand
    is evaluated in log space, ``log(1 - φ)`` from ``E[1 - e^{-tX}]`` so that
    ``φ^{N-1}`` keeps relative accuracy for ``N`` up to ``e^{700}``.  The range of
    ``u`` leaves out less than ``1e-18`` of each integral (Jensen:
    ``E[a/(a+S)] >= a/(a + N)``).
    """
    values = np.asarray(values, np.float64)
    finite = np.isfinite(log_pmf)
    lx = (values - values[finite].max()) / temperature
    lp, lxs = log_pmf[finite], lx[finite]
    log_a_min = float(lxs.min())
    tail = 41.5 + log_n
    u_lo = -log_n - 41.5
    u_hi = math.log(tail - log_a_min) - log_a_min
    grid = np.arange(u_lo, u_hi + step, step)
    work = 2.0 * grid.size * lp.size
    if work > max_work:
        raise ValueError(
            f"the exact soft best-of-N law needs about {work:.3g} evaluations "
            f"(reward range / temperature = {-log_a_min:.4g} nats over "
            f"{lp.size} support points), more than {max_work:.3g}; use a larger "
            "temperature or a coarser reward lattice")
    log_nm1 = math.log(math.expm1(log_n)) if log_n < 30 else log_n + math.log1p(
        -math.exp(-log_n))
    out = np.full(values.shape, -np.inf)
    acc = np.full(lxs.shape, -np.inf)
    chunk = max(1, int(2e6 // lp.size))
    for start in range(0, grid.size, chunk):
        u = grid[start:start + chunk, None]
        z = u + lxs[None, :]  # log(t X_k)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            log_m = lse(lp[None, :] + log1mexp_of_exp(z), axis=1)  # log(1 - φ)
            m = np.exp(log_m)
            small = m < 0.5
            neg_log_phi = np.where(
                small, -np.log1p(-np.where(small, m, 0.0)),
                -lse(lp[None, :] - np.exp(z), axis=1))
            power = np.exp(log_nm1 + np.log(neg_log_phi))[:, None]
            # integrand in u: a t e^{-ta} φ(t)^{N-1} = exp(z - e^z - (N-1)(-log φ))
            f = z - np.exp(z) - power
        acc = np.logaddexp(acc, lse(f, axis=0))
    out[finite] = log_n + math.log(step) + acc
    return out


@register
@_frozen
class SoftBestOfN(_Candidates, Policy):
    r"""Soft best-of-N (Verdun et al. 2025): among ``N`` i.i.d. candidates pick
    ``i`` with probability ``∝ e^{R_i/T}``; its weight is

    .. math::
        g(s) = N\, E\Big[\frac{e^{s/T}}{e^{s/T} + \sum_{j<N} e^{R_j/T}}\Big].

    The exact law uses :func:`_soft_log_weight` (relative accuracy ~1e-12 for
    ``N`` up to ``10^6`` and beyond, tested against enumeration of ``N``-tuples);
    ``T -> 0`` gives best-of-N, ``T -> ∞`` the base policy.
    """

    name: ClassVar[str] = "soft_best_of_n"
    label: ClassVar[str] = "soft best-of-N"
    colour: ClassVar[str] = "green"
    marker: ClassVar[str] = "^"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (NUM_CANDIDATES, DELTA)
    required_keys: ClassVar[tuple[GridKey, ...]] = (TEMPERATURE,)
    traced_fields: ClassVar[tuple[str, ...]] = (
        "temperature", "num_candidates", "log_num_candidates")

    num_candidates: int | None = None
    temperature: float = 1.0
    log_num_candidates: float | None = None

    def __post_init__(self):
        n, log_n = _log_candidates(self.num_candidates, self.log_num_candidates)
        object.__setattr__(self, "num_candidates", n)
        object.__setattr__(self, "log_num_candidates", log_n)
        object.__setattr__(self, "temperature", _real(
            self.temperature, "temperature", minimum=0.0, strict=True))

    def log_pmf(self, values, log_pmf):
        log_pmf = np.asarray(log_pmf, np.float64)
        if self.log_num_candidates == 0.0:
            return log_pmf
        log_g = _soft_log_weight(values, log_pmf, self.log_num_candidates,
                                 self.temperature)
        return _normalise(log_pmf + log_g)

    def sample_tokens(self, key, lm, reward, num_samples, *, first_index=0,
                      batch_size=None, return_tokens=False):
        from jaxalign import sample

        res = sample.soft_best_of_n(
            key, lm, reward, self.num_candidates, self.temperature, num_samples,
            first_index=first_index, batch_size=batch_size,
            return_tokens=return_tokens)
        return _selected(res, return_tokens)

    @classmethod
    def expand(cls, grid, length):
        return [dict(s, temperature=t) for s in _expand_candidates(grid, length)
                for t in grid["temperature"]]

    @classmethod
    def from_settings(cls, settings, lm, reward):
        if settings.get("num_candidates") is not None:
            return cls(settings["num_candidates"], settings["temperature"])
        return cls(temperature=settings["temperature"],
                   log_num_candidates=settings["log_num_candidates"])

    def sweep_values(self, lm, reward, settings, law):
        # N -> infinity gives the tilt at lam = 1/T.
        limit = float(lm.tilt_summary(reward, 1.0 / self.temperature).mean)
        return {"reward_per_token": (None, limit / lm.length)}


@register
@_frozen
class Rejection(Policy):
    r"""Rejection above a threshold: ``π = P(\cdot \mid R >= τ)``, ``g ∝ 1\{s >= τ\}``.

    Values within ``1e-9`` of the lattice span (relative, for non-lattice laws) of
    ``τ`` count as equal to it.
    """

    name: ClassVar[str] = "rejection"
    label: ClassVar[str] = "rejection above a threshold"
    colour: ClassVar[str] = "black"
    marker: ClassVar[str] = "v"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (THRESHOLD,)

    threshold: float

    def __post_init__(self):
        object.__setattr__(self, "threshold", _real(self.threshold, "threshold"))

    def log_pmf(self, values, log_pmf):
        values = np.asarray(values, np.float64)
        gaps = np.diff(values)
        tol = 1e-9 * (float(gaps.min()) if gaps.size else 1.0)
        keep = values >= self.threshold - tol
        log_q = np.where(keep, log_pmf, -np.inf)
        if not np.isfinite(log_q).any():
            raise ValueError(
                f"threshold {self.threshold!r} is above every reward the base model "
                f"can reach (max {float(values[np.isfinite(log_pmf)].max())!r})")
        return _normalise(log_q)


@register
@_frozen
class BestOfPoisson(Policy):
    r"""Best-of-Poisson (Khalaf et al. 2025): best-of-``N`` with ``N - 1 ~ Poisson(μ)``.

    .. math::
        q(s) = G(F(s)) - G(F(s^-)), \qquad G(F) = F e^{μ (F - 1)},

    computed as ``G(F_c)(1 - e^{-d_c})`` with the gap
    ``d_c = -log(1 - q_c/F_c) + μ q_c`` and ``μ(F - 1) = -μ P(R > s)``, so every
    probability keeps relative accuracy.  ``E[N] = 1 + μ``.
    """

    name: ClassVar[str] = "best_of_poisson"
    label: ClassVar[str] = "best-of-Poisson"
    colour: ClassVar[str] = "orange"
    marker: ClassVar[str] = "P"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (POISSON_MEAN,)

    poisson_mean: float

    def __post_init__(self):
        object.__setattr__(self, "poisson_mean",
                           _real(self.poisson_mean, "poisson_mean", minimum=0.0))

    def log_pmf(self, values, log_pmf):
        mu = self.poisson_mean
        log_pmf = np.asarray(log_pmf, np.float64)
        log_f, log_s = log_cdf_sf(log_pmf)
        finite = np.isfinite(log_pmf)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            log_g = log_f - mu * np.exp(log_s)
            ratio = np.exp(np.where(finite, log_pmf - log_f, -np.inf))
            gap = -np.log1p(-np.minimum(ratio, 1.0)) + mu * np.exp(log_pmf)
            log_q = log_g + log1mexp_of_exp(np.log(gap))
        return np.where(finite, log_q, -np.inf)


@register
@_frozen
class ChiSquared(Policy):
    r"""The χ²-regularised optimum (Huang et al. 2025):
    ``argmax_π E_π[R] - β χ²(π‖P)``.

    .. math::
        g(s) = \max\Big(0, \frac{s - c}{2β}\Big), \qquad E_P[(R - c)_+] = 2β,

    the unique ``c`` found exactly on the piecewise-linear, decreasing left side
    (KKT: ``R - 2βg - c = 0`` where ``g > 0``).
    """

    name: ClassVar[str] = "chi_squared"
    label: ClassVar[str] = r"$\chi^2$-regularised optimum"
    colour: ClassVar[str] = "sky_blue"
    marker: ClassVar[str] = "X"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (BETA,)

    beta: float

    def __post_init__(self):
        object.__setattr__(self, "beta",
                           _real(self.beta, "beta", minimum=0.0, strict=True))

    def threshold(self, values, log_pmf) -> float:
        """The normalising ``c``: ``E_P[(R - c)_+] = 2β``."""
        values = np.asarray(values, np.float64)
        keep = np.isfinite(log_pmf)
        v, p = values[keep], np.exp(log_pmf[keep] - lse(log_pmf[keep]))
        top = v[-1]
        w = v - top  # <= 0: sums with less cancellation
        # h(v_j) = E[(R - v_j)_+] = sum_{i>j} p_i (w_i - w_j), decreasing in j.
        tail_p = np.r_[np.cumsum(p[::-1])[::-1][1:], 0.0]  # P(R > v_j)
        tail_pw = np.r_[np.cumsum((p * w)[::-1])[::-1][1:], 0.0]
        h = tail_pw - tail_p * w
        target = 2.0 * self.beta
        if target >= h[0]:  # c below the support: g linear everywhere
            return float(top + np.dot(p, w) - target)
        j = int(np.flatnonzero(h > target)[-1])  # h(v_j) > target >= h(v_{j+1})
        return float(top + (tail_pw[j] - target) / tail_p[j])

    def log_pmf(self, values, log_pmf):
        values = np.asarray(values, np.float64)
        c = self.threshold(values, log_pmf)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_g = np.log(np.maximum(values - c, 0.0) / (2.0 * self.beta))
        return _normalise(np.where(np.isfinite(log_pmf), log_pmf + log_g, -np.inf))


def _strength_grid(top: float, num: int) -> np.ndarray:
    """0 and geometrically spaced strengths up to ``top``: KL grows like c^2 for
    small c and slowly for large c, so the curve is smooth at both ends."""
    return np.r_[0.0, np.geomspace(min(1e-2, top), top, num - 1)]


@register
@_frozen
class WinRateOptimal(Policy):
    r"""The win-rate-optimal policy (Gui et al. 2024, BoNBoN): the tilt by the
    calibrated reward ``u(s) = F(s^-) + P(R = s)/2``,

    .. math::
        g(s) ∝ e^{c\, u(s)}, \qquad c = \texttt{strength} >= 0.

    Among all policies with a given ``KL(π‖P)`` it has the largest win rate
    against the base (ties count one half).  For a continuous law of ``R``,
    ``w(c) = 1/(1 - e^{-c}) - 1/c`` and ``KL(c) = c w(c) - log((e^c - 1)/c)``.
    """

    name: ClassVar[str] = "win_rate_optimal"
    label: ClassVar[str] = "win-rate optimal"
    colour: ClassVar[str] = "purple"
    marker: ClassVar[str] = "*"
    strength_keys: ClassVar[tuple[GridKey, ...]] = (STRENGTH,)

    strength: float

    def __post_init__(self):
        object.__setattr__(self, "strength",
                           _real(self.strength, "strength", minimum=0.0))

    @classmethod
    def exact_curve(cls, lm, reward, settings, num):
        from jaxalign import exact

        base = lm.reward_law(reward)
        top = 1.1 * max(s["strength"] for s in settings) + 0.1
        return _curve_of_laws(exact.policy_law_from_law(base, cls(c))
                              for c in _strength_grid(top, num))

    @classmethod
    def frontier(cls, lm, reward, max_kl: float, num: int) -> ExactCurve:
        """The win-rate frontier: the largest win rate at each KL up to ``max_kl``
        (sequence level), traced by the strength ``c`` from 0 up."""
        from jaxalign import exact

        base = lm.reward_law(reward)
        top = 1.0
        while (float(exact.policy_law_from_law(base, cls(top)).kl) < max_kl
               and top < 1e4):
            top *= 2.0
        return _curve_of_laws(exact.policy_law_from_law(base, cls(c))
                              for c in _strength_grid(top, num))

    def log_pmf(self, values, log_pmf):
        log_pmf = np.asarray(log_pmf, np.float64)
        u = calibrated_reward(log_pmf)
        return _normalise(np.where(np.isfinite(log_pmf),
                                   log_pmf + self.strength * u, -np.inf))
