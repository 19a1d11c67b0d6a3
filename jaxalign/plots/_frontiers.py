"""Reward vs KL and win rate vs KL at one length: every policy against its frontier."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from jaxalign.plots._common import (
    PALETTE,
    Curve,
    Points,
    _arr,
    _check_rows,
    _colour,
    _errorbar,
    _figure,
    _legend,
    _mc,
    _pick,
    _points,
    _seq_axes,
    _val,
)

# ------------------------------------------------------------------- 1. reward-KL


def _at_one_length(rows, lm, model, length):
    """The points of one model and length of a run (or none, for theory only)."""
    if rows is None:
        if lm is None or length is None:
            raise ValueError(
                "lm and length must be given when rows is None, got "
                f"lm={lm!r}, length={length!r}"
            )
        return [], model, int(length)
    points = _points(_check_rows(rows))
    points, model = _pick(points, "model", model, "model")
    points, length = _pick(points, "length", length, "length")
    return points, model, int(length)


def _by_policy(points, quantity):
    """``[(policy class, its points with a Monte Carlo quantity)]`` in registry
    order; each policy draws in its own style."""
    from jaxalign import policies

    out = [
        (cls, [p for p in points if p["method"] == cls.name
               and _val(p, quantity, "mc_mean") is not None])
        for cls in map(policies.get, policies.names())
    ]
    return [(cls, pts) for cls, pts in out if pts]


def _frontier(lm, reward, x_hi: float, num: int) -> Curve:
    """The exact finite-n frontier per token up to KL ``x_hi`` per token, through
    the model's own protocol (:class:`jaxalign.models.BaseModel`): parametrically in
    ``λ``, ``(KL(Φ_λ), E_{Φ_λ} R) / n`` from ``tilt_summary`` is exactly
    ``optimal_reward`` (no root finding per point), then flat at the top reward
    beyond ``max_kl``."""
    import jax

    n = lm.length
    lam_hi = np.asarray(lm.lam_for_kl(reward, x_hi * n))
    dtype, lam_hi = lam_hi.dtype, float(lam_hi)
    top = math.inf
    if not math.isfinite(lam_hi):  # slack constraint beyond max_kl: flat part
        top = float(lm.max_kl(reward)) / n
        lam_hi = float(lm.lam_for_kl(reward, 0.999 * top * n))
    lams = np.linspace(0.0, lam_hi, num).astype(dtype)
    summary = jax.vmap(lambda lam: lm.tilt_summary(reward, lam))(lams)
    budgets, reward_n = np.asarray(summary.kl), np.asarray(summary.mean)
    if math.isfinite(top):
        r_top = float(lm.optimal_reward(reward, math.inf))
        budgets = np.r_[budgets, top * n, x_hi * n]
        reward_n = np.r_[reward_n, r_top, r_top]
    return Curve(budgets / n, reward_n / n)


def _limit_frontier(lm, reward, x_hi: float, num: int) -> Curve | None:
    """The ``n → ∞`` frontier per token, ``(λΛ'(λ) - Λ(λ), Λ'(λ))`` from the model's
    ``tilt_rates`` (a chain's Perron root), or ``None`` where the model has no such
    limit (``ValueError``: a chain that is not primitive, or time-inhomogeneous)
    or where it is the finite-n frontier itself (i.i.d. tokens)."""
    import jax

    try:
        lam_hi = np.asarray(lm.lam_for_kl_rate(reward, x_hi))
    except ValueError:
        return None
    dtype, lam_hi = lam_hi.dtype, float(lam_hi)
    lam_hi = lam_hi if math.isfinite(lam_hi) and lam_hi < 1e6 else 1e6
    lams = np.r_[np.linspace(0.0, min(lam_hi, 50.0), num - 1), lam_hi].astype(dtype)
    rates = jax.vmap(lambda lam: lm.tilt_rates(reward, lam))(lams)
    x, y = np.asarray(rates.kl), np.asarray(rates.mean)
    # i.i.d. tokens: the limit is the finite-n frontier itself (checked at two λ).
    tol = 64 * np.finfo(y.dtype).eps
    if all(abs(float(lm.tilt_summary(reward, lams[i]).mean) / lm.length - y[i])
           <= tol * max(1.0, abs(y[i])) for i in (num // 2, num - 2)):
        return None
    keep = np.isfinite(x) & np.isfinite(y) & (x <= x_hi * (1 + 1e-9))
    if not np.any(keep):
        return None
    x, y = x[keep], y[keep]
    return Curve(x, y)


def reward_kl(
    rows,
    lm=None,
    reward=None,
    *,
    model: str | None = None,
    length: int | None = None,
    extra_points: Mapping[str, Points] | None = None,
    best_of_n_max: int | None = None,
    num_curve: int = 96,
):
    r"""Reward vs KL at one length: the optimal frontier and every method on it.

    .. math::
        \max_{Q:\,D(Q\|P)\le\Delta} E_Q[R] = n\Lambda'(\lambda_\Delta)
        \quad\text{(frontier)}, \qquad
        D(\pi_{BoN}\|P) \le \log N - \tfrac{N-1}{N} \quad\text{(bound)}.

    Drawn per token (bottom/left axes) and per sequence (top/right axes):

    - the exact finite-n optimal frontier, the model's ``optimal_reward`` (needs
      ``lm``, ``reward``; traced through its ``tilt_summary``);
    - where it differs (a model with memory), the ``n → ∞`` frontier
      ``(λΛ'(λ) - Λ(λ), Λ'(λ))`` of the model's ``tilt_rates``, dashed: for a
      :class:`~jaxalign.MarkovLM`, ``Λ = log ρ(P_λ)`` (its Perron root);
    - tilted Monte Carlo rewards (95% intervals) at their exact KL;
    - the exact best-of-N curve over a dense grid of ``N`` (on the model's exact
      ``reward_law``; needs ``lm``, ``reward``) and best-of-N Monte Carlo points at
      their exact KL;
    - the same best-of-N points placed at the bound ``log N - (N-1)/N`` (hollow),
      joined to their true position, to show how far off that x-position is;
    - every other policy of :mod:`jaxalign.policies` in the rows (soft best-of-N,
      rejection, best-of-Poisson, χ², win-rate optimal ...) at its exact KL, in the
      style its class declares, with its exact curve where the class has one;
    - any ``extra_points`` (per-token ``Points``, e.g. RL policies).

    Args:
      rows: rows of one run (:func:`jaxalign.store.read_results`), or ``None`` to
        draw only the theory curves and ``extra_points`` (then ``lm``, ``reward``
        and ``length`` are required).
      lm: the base model (:class:`jaxalign.models.BaseModel`: a
        :class:`~jaxalign.MemorylessLM` or a :class:`~jaxalign.MarkovLM`), at any
        length (it is rebuilt at ``length`` by ``replace``; a time-inhomogeneous
        chain only exists at its own), for the exact and limit curves; optional.
      reward: its reward (:class:`~jaxalign.LinearReward`, or a
        :class:`~jaxalign.PairReward` for a chain).
      model: which model of the run (needed when the run has several).
      length: which length (needed when the run has several).
      extra_points: ``{label: Points}`` in per-token units.
      best_of_n_max: draw the exact best-of-N curve up to this ``N`` (default: the
        largest ``N`` in the rows).
      num_curve: points on the frontier and exact best-of-N curves.

    Returns:
      A Figure with one axes (plus secondary sequence-level axes).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.3, length=8)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> fig = reward_kl(None, lm, r, length=8, best_of_n_max=16)
      >>> fig.axes[0].get_xlabel()
      'KL per token $D(\\pi\\|P)/n$ (nats)'
      >>> fig = reward_kl(read_results(run_dir), lm, r)  # doctest: +SKIP
      >>> fig.savefig("frontier.pdf")  # doctest: +SKIP
    """
    from jaxalign import policies

    points, model, n = _at_one_length(rows, lm, model, length)
    fig, axes = _figure(width=6.4, height=4.8)
    ax = axes[0, 0]
    kl_of = lambda p: _val(p, "kl_per_token", "exact")  # noqa: E731
    by_policy = _by_policy(points, "reward_per_token")
    curve_settings = {cls: [dict(p) for p in pts] for cls, pts in by_policy}
    if best_of_n_max:
        curve_settings.setdefault(policies.BestOfN, []).append(
            {"log_num_candidates": math.log(best_of_n_max)})
    xs = [kl_of(p) or 0.0 for _, pts in by_policy for p in pts]
    xs += [_val(p, "kl_bound_per_token", "exact") or 0.0
           for _, pts in by_policy for p in pts]
    if extra_points:
        xs += [float(np.max(_arr(e.x))) for e in extra_points.values()]
    if best_of_n_max:
        big = float(best_of_n_max)
        xs.append((math.log(big) - (big - 1) / big) / n)
    lm_n = None
    if lm is not None:
        if reward is None:
            raise ValueError("reward must be given with lm, got None")
        lm_n = lm.replace(length=n)
    x_hi = 1.15 * max(xs + [1e-3])
    if lm_n is not None:
        frontier = _frontier(lm_n, reward, x_hi, num_curve)
        ax.plot(frontier.x, frontier.y, color=PALETTE["black"], lw=2,
                label=rf"optimal frontier, exact at n = {n}")
        limit = _limit_frontier(lm_n, reward, x_hi, num_curve)
        if limit is not None:
            ax.plot(limit.x, limit.y, color=PALETTE["black"], lw=1.2, ls="--",
                    label=r"$n\to\infty$: $(\lambda\Lambda'-\Lambda,\ \Lambda')$, "
                    r"$\Lambda=\log\rho(P_\lambda)$")
        # Each policy's exact (KL, reward) curve over its strength, where it has one.
        for cls, settings in curve_settings.items():
            curve = cls.exact_curve(lm_n, reward, settings, num_curve)
            if curve is None:
                continue
            kl, mean = np.asarray(curve.kl), np.asarray(curve.expected_reward)
            keep = kl / n <= x_hi
            ax.plot(kl[keep] / n, mean[keep] / n, color=PALETTE[cls.colour], lw=1.5,
                    label=f"{cls.label}, exact")
    for cls, pts in by_policy:
        colour = PALETTE[cls.colour]
        at_kl = _mc(pts, "reward_per_token", lambda p: kl_of(p) or 0.0)
        if at_kl is not None:
            where = "at its exact KL " if cls.strength_keys else ""
            _errorbar(ax, at_kl, label=f"{cls.label} {where}(MC, 95% CI)",
                      color=colour, marker=cls.marker)
        at_bound = _mc(pts, "reward_per_token",
                       lambda p: _val(p, "kl_bound_per_token", "exact"))
        if at_bound is not None:
            _errorbar(ax, at_bound,
                      label=rf"{cls.label} at $\log N-(N-1)/N$ (MC)",
                      color=PALETTE["orange"], marker=cls.marker, filled=False)
            if at_kl is not None and len(at_kl.x) == len(at_bound.x):
                for x0, x1, y in zip(at_kl.x, at_bound.x, at_kl.y, strict=True):
                    ax.plot([x0, x1], [y, y], color=PALETTE["orange"], lw=0.8, ls=":")
        for p in pts:
            text = cls.annotation(p)
            y = _val(p, "reward_per_token", "mc_mean")
            y = _val(p, "reward_per_token", "exact") if y is None else y
            if text and kl_of(p) is not None and y is not None:
                ax.annotate(text, (kl_of(p), y), fontsize="x-small", xytext=(4, -10),
                            textcoords="offset points")
    if extra_points:
        for i, (label, e) in enumerate(extra_points.items()):
            _errorbar(ax, e, label=label, color=_colour(i + 4), marker="v")
    ax.set_xlim(left=-0.02 * x_hi, right=x_hi)
    ax.set_xlabel(r"KL per token $D(\pi\|P)/n$ (nats)")
    ax.set_ylabel(r"reward per token $E_\pi[R]/n$")
    ax.set_title(
        f"Reward vs KL{': ' + str(model) if model else ''}, n = {n}", fontsize="medium"
    )
    _seq_axes(ax, n)
    _legend(ax, loc="best")
    return fig


def win_rate_kl(rows, lm=None, reward=None, *, model: str | None = None,
                length: int | None = None, best_of_n_max: int | None = None,
                num_curve: int = 64):
    r"""Win rate against the base vs KL at one length, under the win-rate frontier.

    .. math::
        \max_{Q:\,D(Q\|P)\le\Delta} P(R_Q > R') + \tfrac12 P(R_Q = R')
        \ \text{is attained by}\ g \propto e^{c\,u(R)},\ u(s) = F(s^-) + \tfrac12
        P(R = s)

    (Gui et al. 2024).  For a continuous law of ``R`` best-of-N sits on this
    frontier (``W = N/(N+1)`` at ``KL = log N - (N-1)/N``); ties put it strictly
    below.  Drawn per token (bottom axis, sequence level on top): the frontier
    (needs ``lm``, ``reward``), best-of-N's exact curve, and every policy of the
    rows with a Monte Carlo win rate at its exact KL, in its registered style.

    Args:
      rows: rows of one run (:func:`jaxalign.store.read_results`), or ``None``
        for the exact curves only (then ``lm``, ``reward`` and ``length``).
      lm, reward: the base model (any length) and reward, for the exact curves.
      model, length: which model and length of the run.
      best_of_n_max: draw best-of-N's exact curve up to this ``N``.
      num_curve: points per exact curve.

    Returns:
      A Figure with one axes (plus a secondary sequence-level KL axis).

    Examples:
      >>> import jaxalign
      >>> lm = jaxalign.MemorylessLM.bernoulli(0.3, length=4)
      >>> r = jaxalign.LinearReward([0.0, 1.0])
      >>> fig = win_rate_kl(None, lm, r, length=4, best_of_n_max=64)
      >>> fig.axes[0].get_ylabel()
      'win rate against the base'
    """
    from jaxalign import policies

    if rows is None and reward is None:
        raise ValueError("reward must be given when rows is None, got None")
    points, model, n = _at_one_length(rows, lm, model, length)
    fig, axes = _figure(width=6.4, height=4.8)
    ax = axes[0, 0]
    kl_of = lambda p: _val(p, "kl_per_token", "exact")  # noqa: E731
    by_policy = _by_policy(points, "win_rate")
    xs = [kl_of(p) or 0.0 for _, pts in by_policy for p in pts]
    bon_settings = [dict(p) for cls, pts in by_policy if cls is policies.BestOfN
                    for p in pts]
    if best_of_n_max:
        bon_settings.append({"log_num_candidates": math.log(best_of_n_max)})
    bon_curve = None
    if lm is not None and reward is not None:
        lm_n = lm.replace(length=n)
        if bon_settings:
            bon_curve = policies.BestOfN.exact_curve(lm_n, reward, bon_settings,
                                                     num_curve)
            xs.append(float(np.max(np.asarray(bon_curve.kl))) / n)
    x_hi = 1.1 * max(xs + [1e-3])
    if lm is not None and reward is not None:
        front = policies.WinRateOptimal.frontier(lm_n, reward, x_hi * n, num_curve)
        keep = np.asarray(front.kl) / n <= x_hi
        ax.plot(np.asarray(front.kl)[keep] / n, np.asarray(front.win_rate)[keep],
                color=PALETTE["black"], lw=2,
                label="win-rate frontier (win-rate optimal, exact)")
        if bon_curve is not None:
            kl = np.asarray(bon_curve.kl)
            ax.plot(kl / n, np.asarray(bon_curve.win_rate),
                    color=PALETTE[policies.BestOfN.colour], lw=1.5,
                    label=f"{policies.BestOfN.label}, exact (ties uniform)")
    for cls, pts in by_policy:
        at_kl = _mc(pts, "win_rate", lambda p: kl_of(p) or 0.0)
        if at_kl is not None:
            _errorbar(ax, at_kl, label=f"{cls.label} (MC, 95% CI)",
                      color=PALETTE[cls.colour], marker=cls.marker)
    ax.axhline(0.5, color=PALETTE["black"], lw=0.6, ls=":")
    ax.set_xlim(left=-0.02 * x_hi, right=x_hi)
    ax.set_ylim(top=1.0)
    ax.set_xlabel(r"KL per token $D(\pi\|P)/n$ (nats)")
    ax.set_ylabel("win rate against the base")
    ax.set_title(f"Win rate vs KL{': ' + str(model) if model else ''}, n = {n}",
                 fontsize="medium")
    _seq_axes(ax, n, y=False)
    _legend(ax, loc="lower right")
    return fig
