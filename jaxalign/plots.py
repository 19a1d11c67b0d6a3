r"""Figures: Monte Carlo, exact and asymptotic values on one picture.

Every function returns a :class:`matplotlib.figure.Figure` built directly (no
``pyplot`` state, so nothing is shown or leaked), and matplotlib is imported inside
the functions: ``import jaxalign`` never imports it.  Save with
``fig.savefig("out.pdf")``; in a notebook, a figure is displayed by ``display(fig)``.

Conventions shared by all figures:

- Monte Carlo values are markers with **95% confidence intervals** (``1.96`` standard
  errors), exact finite-``n`` values are solid lines, closed forms / asymptotes are
  dashed or dotted lines.
- Divergences and rewards are in **nats** (natural logarithms); "per token" means the
  sequence value divided by the length ``n``.
- Colours come from the Okabe–Ito colour-blind-safe palette (:data:`PALETTE`).

Figures (numbers refer to the issue / THEORY.md):

1. :func:`reward_kl` — reward vs KL: optimal frontier, tilted and best-of-N points,
   the exact best-of-N curve, best-of-N at its bound ``log N - (N-1)/N``, soft BoN.
2. :func:`bon_vs_rl` — best-of-N with ``N = e^{nδ}`` vs the KL-constrained optimum
   in ``n`` (Yang et al., THEORY.md §2 Y5).
3. :func:`scaled_cumulants` — ``κ_m(R)/n`` and the SCGF vs ``n`` (§1.6–1.7).
4. :func:`large_deviations` — ``-(1/n) log P(R >= nx)`` vs ``n`` against ``I(x)``,
   with the Bahadur–Rao correction (§1.8).
5. :func:`best_of_n_kl` — exact best-of-N KL vs the formula vs the estimator
   (Beirami et al., §3).
6. :func:`bounds` — reward gain vs ``sqrt(2σ² KL)`` and the best-of-N divergence
   bounds (Mroueh, §4 M1–M4).

7. :func:`win_rate_kl` — win rate against the base vs KL under the win-rate frontier
   (Gui et al. 2024): best-of-N below it with ties, every other policy beside.

:func:`plot_run` writes the figures that apply to a sweep run directory.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PALETTE",
    "Curve",
    "KLPanel",
    "Points",
    "best_of_n_kl",
    "bon_vs_rl",
    "bounds",
    "large_deviations",
    "plot_frontier",
    "plot_goodhart",
    "plot_run",
    "reward_kl",
    "scaled_cumulants",
    "win_rate_kl",
]

#: Okabe–Ito colour-blind-safe palette (Okabe and Ito, *Color Universal Design*, 2008).
PALETTE = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
_CYCLE = (
    "blue",
    "vermillion",
    "green",
    "orange",
    "purple",
    "sky_blue",
    "black",
    "yellow",
)
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


class Points(NamedTuple):
    """Markers with optional error bars (standard errors; drawn as 95% intervals).

    Attributes:
      x: ``(G,)`` abscissae.
      y: ``(G,)`` ordinates.
      yerr: ``(G,)`` standard errors of ``y`` or ``None``.
      xerr: ``(G,)`` standard errors of ``x`` or ``None``.
    """

    x: Any
    y: Any
    yerr: Any = None
    xerr: Any = None


class Curve(NamedTuple):
    """A line ``(x, y)``, optionally with a shaded band ``[lower, upper]``."""

    x: Any
    y: Any
    lower: Any = None
    upper: Any = None


class KLPanel(NamedTuple):
    """One panel of :func:`best_of_n_kl`.

    Attributes:
      title: panel title.
      num_candidates: ``(G,)`` values of ``N``.
      exact: ``{label: (G,) exact KL(π_BoN‖P)}``.
      estimator: ``{label: (mean (G,), stderr (G,))}`` Monte Carlo estimator values,
        or ``None``.
      saturation: ``{label: level}`` horizontal reference levels (e.g. ``log L``),
        or ``None``.
    """

    title: str
    num_candidates: Any
    exact: Mapping[str, Any]
    estimator: Mapping[str, Any] | None = None
    saturation: Mapping[str, float] | None = None


# ------------------------------------------------------------------------- helpers


def _figure(ncols: int = 1, nrows: int = 1, width: float = 5.0, height: float = 3.8):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig, axes


def _colour(i: int) -> str:
    return PALETTE[_CYCLE[i % len(_CYCLE)]]


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _err(se) -> np.ndarray | None:
    return None if se is None else _Z95 * _arr(se)


def _errorbar(ax, pts: Points, *, label, color, marker="o", filled=True, **kw):
    face = color if filled else "none"
    return ax.errorbar(
        _arr(pts.x),
        _arr(pts.y),
        yerr=_err(pts.yerr),
        xerr=_err(pts.xerr),
        fmt=marker,
        color=color,
        mfc=face,
        mec=color,
        ms=6,
        capsize=3,
        linestyle="none",
        label=label,
        **kw,
    )


def _band(ax, x, mean, se, *, color, label=None):
    x, mean, half = _arr(x), _arr(mean), _Z95 * _arr(se)
    ax.fill_between(
        x, mean - half, mean + half, color=color, alpha=0.2, linewidth=0, label=label
    )


def _log_x(ax, y=False, ticks=None):
    """Log axes with plain-number tick labels (``4``, ``8``, not ``4×10^0``).

    ``ticks``: x values to label (e.g. the sequence lengths), if few."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis_list = [ax.xaxis] + ([ax.yaxis] if y else [])
    ax.set_xscale("log")
    ticks = None if ticks is None else sorted({float(t) for t in ticks})
    if ticks is not None and 1 <= len(ticks) <= 10:
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
        axis_list = axis_list[1:]
    if y:
        ax.set_yscale("log")
    ax.autoscale_view()
    for axis in axis_list:
        lo, hi = axis.get_view_interval()
        if lo > 0 and hi / lo < 100:
            fmt = ScalarFormatter()
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
            axis.set_minor_formatter(NullFormatter())


def _legend(ax, **kw):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", framealpha=0.85, **kw)


def _check_rows(rows) -> list[dict]:
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise ValueError(
            f"rows must be a list of dicts (jaxalign.store.read_results), got {rows!r}"
        )
    rows = list(rows)
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(
            "rows must be a non-empty list of dicts (jaxalign.store.read_results), "
            f"got {rows[:2]!r}"
        )
    missing = {"point", "model", "length", "method", "quantity"} - set(rows[0])
    if missing:
        raise ValueError(f"rows lack the columns {sorted(missing)}; allowed: run rows")
    return rows


def _points(rows: list[dict]) -> list[dict]:
    """Group rows by grid point: the point's fields plus ``{quantity: row}``."""
    out: dict[str, dict] = {}
    for r in rows:
        p = out.setdefault(r["point"], dict(r, q={}))
        p["q"][r["quantity"]] = r
    return list(out.values())


def _pick(points, key: str, value, what: str):
    values = sorted({p[key] for p in points}, key=str)
    if value is None:
        if len(values) != 1:
            raise ValueError(
                f"{what} must be given when the rows hold several: {values!r}"
            )
        value = values[0]
    if value not in values:
        raise ValueError(f"{what}={value!r} is not in the rows; allowed: {values!r}")
    return [p for p in points if p[key] == value], value


def _val(point, quantity, column):
    row = point["q"].get(quantity)
    return None if row is None else row.get(column)


def _mc(points, quantity, x_fn) -> Points | None:
    xs, ys, es = [], [], []
    for p in points:
        y = _val(p, quantity, "mc_mean")
        x = x_fn(p)
        if y is None or x is None:
            continue
        xs.append(x)
        ys.append(y)
        es.append(_val(p, quantity, "mc_stderr") or 0.0)
    return Points(np.array(xs), np.array(ys), np.array(es)) if xs else None


def _vmap_scalar(fn, lm, reward, values) -> np.ndarray:
    import jax

    return np.asarray(
        jax.vmap(fn, in_axes=(None, None, 0))(
            lm, reward, np.asarray(values, dtype=np.asarray(lm.log_probs).dtype)
        )
    )


def _seq_axes(ax, n: int, *, x=True, y=True):
    """Secondary axes in sequence units (per-token value times ``n``)."""
    if x:
        sx = ax.secondary_xaxis("top", functions=(lambda v: v * n, lambda v: v / n))
        sx.set_xlabel(f"sequence KL (nats, n = {n})", fontsize="small")
    if y:
        sy = ax.secondary_yaxis("right", functions=(lambda v: v * n, lambda v: v / n))
        sy.set_ylabel("sequence reward E[R]", fontsize="small")


# ------------------------------------------------------------------- 1. reward-KL


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

    - the optimal frontier ``theory.optimal_reward`` (needs ``lm``, ``reward``);
    - tilted Monte Carlo rewards (95% intervals) at their exact KL;
    - the exact best-of-N curve over a dense grid of ``N`` (``exact.best_of_n``;
      needs ``lm``, ``reward``) and best-of-N Monte Carlo points at their exact KL;
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
      lm: the base :class:`~jaxalign.MemorylessLM` at this length (any length: it is
        rebuilt at ``length``), for the frontier and the exact curve; optional.
      reward: its :class:`~jaxalign.LinearReward`.
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
    if rows is None:
        if lm is None or length is None:
            raise ValueError(
                "lm and length must be given when rows is None, got "
                f"lm={lm!r}, length={length!r}"
            )
        points = []
    else:
        points = _points(_check_rows(rows))
        points, model = _pick(points, "model", model, "model")
        points, length = _pick(points, "length", length, "length")
    n = int(length)
    fig, axes = _figure(width=6.4, height=4.8)
    ax = axes[0, 0]
    from jaxalign import policies

    kl_of = lambda p: _val(p, "kl_per_token", "exact")  # noqa: E731
    # Points by policy, in registry order; each policy draws in its own style.
    by_policy = [
        (cls, [p for p in points if p["method"] == cls.name])
        for cls in map(policies.get, policies.names())
    ]
    by_policy = [(cls, pts) for cls, pts in by_policy if pts]
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
        from jaxalign import theory

        if reward is None:
            raise ValueError("reward must be given with lm, got None")
        lm_n = lm.replace(length=n)
    x_hi = 1.15 * max(xs + [1e-3])
    if lm_n is not None:
        # Parametrically in λ, (KL(Φ_λ), E_{Φ_λ} R) is exactly the frontier
        # theory.optimal_reward (no root finding per point).
        lam_hi = float(theory.lam_for_kl(lm_n, reward, x_hi * n))
        top = math.inf
        if not math.isfinite(lam_hi):  # slack constraint beyond max_kl: flat part
            top = float(theory.max_kl(lm_n, reward)) / n
            lam_hi = float(theory.lam_for_kl(lm_n, reward, 0.999 * top * n))
        lams = np.linspace(0.0, lam_hi, num_curve)
        budgets = _vmap_scalar(theory.kl, lm_n, reward, lams)
        frontier = _vmap_scalar(theory.expected_reward, lm_n, reward, lams)
        if math.isfinite(top):
            r_top = float(theory.expected_reward(lm_n, reward, math.inf))
            budgets = np.r_[budgets, top * n, x_hi * n]
            frontier = np.r_[frontier, r_top, r_top]
        ax.plot(
            budgets / n,
            frontier / n,
            color=PALETTE["black"],
            lw=2,
            label=r"optimal frontier $\Lambda'(\lambda_\delta)$",
        )
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

    if rows is None:
        if lm is None or reward is None or length is None:
            raise ValueError("lm, reward and length must be given when rows is None")
        points = []
    else:
        points = _points(_check_rows(rows))
        points, model = _pick(points, "model", model, "model")
        points, length = _pick(points, "length", length, "length")
    n = int(length)
    fig, axes = _figure(width=6.4, height=4.8)
    ax = axes[0, 0]
    kl_of = lambda p: _val(p, "kl_per_token", "exact")  # noqa: E731
    by_policy = [
        (cls, [p for p in points if p["method"] == cls.name
               and _val(p, "win_rate", "mc_mean") is not None])
        for cls in map(policies.get, policies.names())
    ]
    by_policy = [(cls, pts) for cls, pts in by_policy if pts]
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


# ------------------------------------------------------------------ 2. BoN vs RL


def bon_vs_rl(
    rows, lm=None, reward=None, *, model: str | None = None, delta: float | None = None
):
    r"""Best-of-N with ``N = ⌈e^{nδ}⌉`` vs the KL-constrained optimum, against ``n``.

    .. math::
        \tfrac1n E_{BoN}[R] \to x^* = \Lambda'(\lambda_\delta), \quad
        \tfrac1n D(\pi_{BoN}\|P) \to \delta, \quad
        x^* - \tfrac1n E_{BoN}[R] \approx \frac{\log n}{2\lambda_\delta n}.

    Three panels (Yang et al. 2024, THEORY.md §2 Y5):

    (a) reward per token: best-of-N Monte Carlo (95% CI) and exact, the tilted
        policy Monte Carlo and exact, and the limit ``x*`` (dashed);
    (b) KL per token: best-of-N exact, its bound ``(log N - (N-1)/N)/n``, the tilted
        Monte Carlo KL, ``KL(π_BoN ‖ Φ_{λ_δ})/n`` and ``δ`` (dashed);
    (c) the gap ``x* - E_BoN[R]/n`` on log-log axes, exact and Monte Carlo, against the
        heuristic ``log n / (2 λ_δ n)`` (needs ``lm`` and ``reward`` for ``λ_δ``).

    Args:
      rows: rows of a run with ``delta`` points at two or more lengths.
      lm, reward: the base model (any length) and reward, for ``λ_δ``; optional.
      model: which model (needed when the run has several).
      delta: which ``δ`` (needed when the run has several).

    Returns:
      A Figure with three axes.

    Examples:
      >>> fig = bon_vs_rl(read_results("runs/yang2024_equivalence"))  # doctest: +SKIP
    """
    points = [p for p in _points(_check_rows(rows)) if p.get("delta") is not None]
    if not points:
        raise ValueError(
            "rows hold no delta points (N = e^{n delta}); allowed: a run "
            "with grid.delta, e.g. the yang2024_equivalence config"
        )
    points, model = _pick(points, "model", model, "model")
    points, delta = _pick(points, "delta", delta, "delta")
    from jaxalign.policies import BestOfN, Tilted

    bon = sorted(
        (p for p in points if p["method"] == BestOfN.name), key=lambda p: p["length"]
    )
    tilted = sorted(
        (p for p in points if p["method"] == Tilted.name), key=lambda p: p["length"]
    )
    fig, axes = _figure(ncols=3, width=4.6, height=3.9)
    ax_r, ax_kl, ax_gap = axes[0]
    length = lambda p: float(p["length"])  # noqa: E731
    x_star = None
    for p in bon:
        x_star = _val(p, "reward_per_token", "asymptotic") or x_star
    if x_star is None:
        for p in tilted:
            x_star = _val(p, "reward_per_token", "exact") or x_star
    # (a) reward per token
    if bon:
        ns = np.array([length(p) for p in bon])
        ex = np.array([_val(p, "reward_per_token", "exact") for p in bon], float)
        ax_r.plot(ns, ex, color=PALETTE["vermillion"], lw=1.5, label="best-of-N, exact")
        pts = _mc(bon, "reward_per_token", length)
        if pts is not None:
            _errorbar(
                ax_r,
                pts,
                label="best-of-N (MC, 95% CI)",
                color=PALETTE["vermillion"],
                marker="D",
            )
    if tilted:
        ns_t = np.array([length(p) for p in tilted])
        ex_t = np.array([_val(p, "reward_per_token", "exact") for p in tilted], float)
        ax_r.plot(
            ns_t, ex_t, color=PALETTE["blue"], lw=1.5, label="KL-RL (tilt), exact"
        )
        pts = _mc(tilted, "reward_per_token", length)
        if pts is not None:
            _errorbar(
                ax_r,
                pts,
                label="KL-RL (tilt, MC)",
                color=PALETTE["blue"],
                marker="o",
                filled=False,
            )
    if x_star is not None:
        ax_r.axhline(
            x_star,
            color=PALETTE["black"],
            ls="--",
            lw=1,
            label=rf"$x^*=\Lambda'(\lambda_\delta)$ = {x_star:.4g}",
        )
    _log_x(ax_r, ticks=[p["length"] for p in bon + tilted])
    ax_r.set_xlabel("sequence length n")
    ax_r.set_ylabel(r"reward per token $E[R]/n$")
    ax_r.set_title(
        rf"(a) reward, $N=\lceil e^{{n\delta}}\rceil$, $\delta$={delta:g}",
        fontsize="medium",
    )
    _legend(ax_r, loc="lower right")
    # (b) KL per token
    if bon:
        kl = np.array([_val(p, "kl_per_token", "exact") for p in bon], float)
        ax_kl.plot(
            ns,
            kl,
            "-D",
            color=PALETTE["vermillion"],
            ms=4,
            label=r"$D(\pi_{BoN}\|P)/n$, exact",
        )
        bound = np.array([_val(p, "kl_bound_per_token", "exact") for p in bon], float)
        ax_kl.plot(
            ns,
            bound,
            ":",
            color=PALETTE["orange"],
            lw=1.5,
            label=r"$(\log N-(N-1)/N)/n$",
        )
        to_tilt = [_val(p, "kl_to_tilted_per_token", "exact") for p in bon]
        if all(v is not None for v in to_tilt):
            ax_kl.plot(
                ns,
                np.array(to_tilt, float),
                "-s",
                color=PALETTE["green"],
                ms=4,
                label=r"$D(\pi_{BoN}\|\Phi_{\lambda_\delta})/n$, exact",
            )
    if tilted:
        pts = _mc(tilted, "kl_per_token", length)
        if pts is not None:
            _errorbar(
                ax_kl,
                pts,
                label="KL-RL KL (MC)",
                color=PALETTE["blue"],
                marker="o",
                filled=False,
            )
    ax_kl.axhline(
        delta, color=PALETTE["black"], ls="--", lw=1, label=rf"$\delta$ = {delta:g}"
    )
    _log_x(ax_kl, ticks=[p["length"] for p in bon + tilted])
    ax_kl.set_xlabel("sequence length n")
    ax_kl.set_ylabel("KL per token (nats)")
    ax_kl.set_title("(b) KL divergences", fontsize="medium")
    _legend(ax_kl, loc="center right")
    # (c) the gap and its (log n)/n prediction
    if bon and x_star is not None:
        gap = x_star - ex
        pos = gap > 0
        ax_gap.plot(
            ns[pos],
            gap[pos],
            "-D",
            color=PALETTE["vermillion"],
            ms=4,
            label=r"$x^*-E_{BoN}[R]/n$, exact",
        )
        pts = _mc(bon, "reward_per_token", length)
        if pts is not None:
            g = x_star - pts.y
            ok = g > 0
            _errorbar(
                ax_gap,
                Points(pts.x[ok], g[ok], pts.yerr[ok]),
                label="gap (MC)",
                color=PALETTE["vermillion"],
                marker="D",
                filled=False,
            )
        if lm is not None:
            from jaxalign import theory

            if reward is None:
                raise ValueError("reward must be given with lm, got None")
            lm1 = lm.replace(length=1)
            lam = float(theory.lam_for_kl(lm1, reward, delta))
            fine = np.geomspace(ns.min(), ns.max(), 64)
            ax_gap.plot(
                fine,
                np.log(fine) / (2 * lam * fine),
                "--",
                color=PALETTE["black"],
                lw=1,
                label=rf"$\log n/(2\lambda_\delta n)$, "
                rf"$\lambda_\delta$={lam:.3g}",
            )
        _log_x(ax_gap, y=True, ticks=ns)
    ax_gap.set_xlabel("sequence length n")
    ax_gap.set_ylabel(r"gap $x^* - E_{BoN}[R]/n$")
    ax_gap.set_title("(c) convergence rate", fontsize="medium")
    _legend(ax_gap, loc="upper right")
    fig.suptitle(f"Best-of-N vs KL-constrained RL in n: {model}", fontsize="medium")
    return fig


# --------------------------------------------------------- 3. cumulants and SCGF


def scaled_cumulants(
    lengths,
    cumulants,
    cumulants_stderr,
    closed_form,
    *,
    t=None,
    scgf=None,
    scgf_stderr=None,
    scgf_closed_form=None,
    scgf_renyi=None,
):
    r"""Scaled cumulants ``κ_m(R)/n`` and the SCGF against ``n``: MC vs closed forms.

    .. math::
        \frac{\kappa_m(R)}{n} = \Lambda^{(m)}(\lambda), \qquad
        \frac1n \log E_{\Phi_\lambda} e^{tR} = \Lambda(\lambda+t) - \Lambda(\lambda)
        = t\,[\log C - H_{1+t}(p_\lambda; q_r)].

    One panel per cumulant order (MC with a 95% band, closed form dashed), and, when
    ``t`` is given, one SCGF panel (MC per ``t`` with a 95% band, closed form dashed,
    the Rényi cross-entropy expression as crosses).

    Args:
      lengths: ``(L,)`` sequence lengths.
      cumulants: ``(L, M)`` Monte Carlo estimates of ``κ_m(R)/n``, ``m = 1..M``.
      cumulants_stderr: ``(L, M)`` their standard errors.
      closed_form: ``(M,)`` ``Λ^{(m)}(λ)``.
      t: ``(T,)`` SCGF arguments, or ``None``.
      scgf: ``(L, T)`` MC estimates of ``(1/n) log E e^{tR}``.
      scgf_stderr: ``(L, T)`` their standard errors.
      scgf_closed_form: ``(T,)`` ``Λ(λ+t) - Λ(λ)``.
      scgf_renyi: ``(T,)`` the Rényi cross-entropy form, or ``None``.

    Returns:
      A Figure with ``M`` (+1) axes.

    Examples:
      >>> fig = scaled_cumulants([4, 16], [[0.5, 0.26], [0.49, 0.25]],
      ...                        [[0.01, 0.02], [0.01, 0.02]], [0.5, 0.25])
      >>> [ax.get_ylabel() for ax in fig.axes]
      ['$\\kappa_1(R)/n$', '$\\kappa_2(R)/n$']
    """
    ns = _arr(lengths)
    kap, se, cf = _arr(cumulants), _arr(cumulants_stderr), _arr(closed_form)
    if (
        kap.ndim != 2
        or kap.shape[0] != ns.shape[0]
        or se.shape != kap.shape
        or cf.shape != kap.shape[1:]
    ):
        raise ValueError(
            f"cumulants {kap.shape}, cumulants_stderr {se.shape} and closed_form "
            f"{cf.shape} must be (L, M), (L, M), (M,) with L = len(lengths) = "
            f"{ns.shape[0]}"
        )
    m_count = kap.shape[1]
    ncols = m_count + (t is not None)
    fig, axes = _figure(ncols=ncols, width=3.6, height=3.4)
    names = {1: "mean", 2: "variance", 3: "3rd cumulant", 4: "4th cumulant"}
    for m in range(m_count):
        ax = axes[0, m]
        c = _colour(m)
        _band(ax, ns, kap[:, m], se[:, m], color=c, label="95% CI")
        ax.plot(ns, kap[:, m], "o", color=c, ms=4, label="Monte Carlo")
        ax.axhline(
            cf[m],
            color=PALETTE["black"],
            ls="--",
            lw=1,
            label=rf"$\Lambda^{{({m + 1})}}(\lambda)$",
        )
        _log_x(ax, ticks=ns)
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(rf"$\kappa_{m + 1}(R)/n$")
        ax.set_title(names.get(m + 1, f"cumulant {m + 1}"), fontsize="medium")
        _legend(ax)
    if t is not None:
        tt = _arr(t)
        sc, sse, scf = _arr(scgf), _arr(scgf_stderr), _arr(scgf_closed_form)
        if (
            sc.shape != (ns.shape[0], tt.shape[0])
            or sse.shape != sc.shape
            or scf.shape != tt.shape
        ):
            raise ValueError(
                f"scgf {sc.shape}, scgf_stderr {sse.shape}, scgf_closed_form "
                f"{scf.shape} must be (L, T), (L, T), (T,) with (L, T) = "
                f"({ns.shape[0]}, {tt.shape[0]})"
            )
        ax = axes[0, -1]
        for j in range(tt.shape[0]):
            c = _colour(j)
            _band(ax, ns, sc[:, j], sse[:, j], color=c)
            ax.plot(ns, sc[:, j], "o", color=c, ms=4, label=f"t = {tt[j]:g} (MC)")
            ax.axhline(scf[j], color=c, ls="--", lw=1)
            if scgf_renyi is not None:
                ax.plot(ns, np.full(ns.shape, _arr(scgf_renyi)[j]), "x", color=c, ms=5)
        ax.plot(
            [],
            [],
            "--",
            color=PALETTE["black"],
            label=r"$\Lambda(\lambda+t)-\Lambda(\lambda)$",
        )
        if scgf_renyi is not None:
            ax.plot(
                [],
                [],
                "x",
                color=PALETTE["black"],
                label=r"$t[\log C - H_{1+t}(p_\lambda;q_r)]$",
            )
        _log_x(ax, ticks=ns)
        ax.set_xlabel("sequence length n")
        ax.set_ylabel(r"$\frac{1}{n}\log E\,e^{tR}$")
        ax.set_title("SCGF (Rényi cross entropy)", fontsize="medium")
        _legend(ax)
    fig.suptitle(
        "Scaled cumulants of the reward under the optimal policy", fontsize="medium"
    )
    return fig


# -------------------------------------------------------------- 4. large deviations


def large_deviations(
    lengths,
    x,
    rate,
    exact_log_tail,
    *,
    mc_log_tail=None,
    mc_log_tail_stderr=None,
    bahadur_rao_log_tail=None,
):
    r"""Large deviations: ``-(1/n) log P(R >= nx)`` vs ``n`` against ``I(x)``.

    .. math::
        -\frac1n \log P(R \ge nx) \to I(x), \qquad
        P(R\ge nx) \approx \frac{e^{-nI(x)}}{t^*\sigma_x\sqrt{2\pi n}}
        \ \text{(Bahadur–Rao)}.

    Left: ``-(1/n) log P`` from the exact law (lines), importance-sampled Monte Carlo
    (markers, 95% CI) and Bahadur–Rao (dashed) for each ``x``, with ``I(x)`` dotted:
    the crude rate converges like ``(log n)/n``.  Right: ``log(P / P_BR)``, the error
    left after the Bahadur–Rao correction, which vanishes like ``1/n``.

    Args:
      lengths: ``(L,)`` sequence lengths.
      x: ``(X,)`` per-token thresholds.
      rate: ``(X,)`` ``I(x)``.
      exact_log_tail: ``(L, X)`` exact ``log P(R >= n x)``.
      mc_log_tail: ``(L, X)`` Monte Carlo ``log P`` estimates, or ``None``.
      mc_log_tail_stderr: ``(L, X)`` standard errors of ``mc_log_tail``.
      bahadur_rao_log_tail: ``(L, X)`` Bahadur–Rao ``log P``, or ``None``.

    Returns:
      A Figure with two axes (one when ``bahadur_rao_log_tail`` is ``None``).

    Examples:
      >>> fig = large_deviations([10, 40], [0.5], [0.087], [[-1.3], [-4.0]])
      >>> len(fig.axes)
      1
    """
    ns, xx, rr, ex = _arr(lengths), _arr(x), _arr(rate), _arr(exact_log_tail)
    shape = (ns.shape[0], xx.shape[0])
    for name, v in (
        ("exact_log_tail", ex),
        ("mc_log_tail", mc_log_tail),
        ("mc_log_tail_stderr", mc_log_tail_stderr),
        ("bahadur_rao_log_tail", bahadur_rao_log_tail),
    ):
        if v is not None and _arr(v).shape != shape:
            raise ValueError(
                f"{name} must have shape (L, X) = {shape}, got {_arr(v).shape}"
            )
    if rr.shape != xx.shape:
        raise ValueError(f"rate must have shape {xx.shape} like x, got {rr.shape}")
    br = None if bahadur_rao_log_tail is None else _arr(bahadur_rao_log_tail)
    fig, axes = _figure(ncols=1 + (br is not None), width=5.0, height=3.9)
    ax = axes[0, 0]
    col = ns[:, None]
    for j in range(xx.shape[0]):
        c = _colour(j)
        ax.plot(
            ns, -ex[:, j] / ns, "-", color=c, lw=1.5, label=f"x = {xx[j]:.3g}, exact"
        )
        if mc_log_tail is not None:
            y = -_arr(mc_log_tail)[:, j] / ns
            se = (
                None
                if mc_log_tail_stderr is None
                else _arr(mc_log_tail_stderr)[:, j] / ns
            )
            _errorbar(
                ax, Points(ns, y, se), label=None, color=c, marker="o", filled=False
            )
        if br is not None:
            ax.plot(ns, -br[:, j] / ns, "--", color=c, lw=1)
        ax.axhline(rr[j], color=c, ls=":", lw=1.2)
    ax.plot([], [], ":", color=PALETTE["black"], label="rate function I(x)")
    if mc_log_tail is not None:
        ax.plot(
            [],
            [],
            "o",
            mfc="none",
            color=PALETTE["black"],
            label="importance sampling (95% CI)",
        )
    if br is not None:
        ax.plot([], [], "--", color=PALETTE["black"], label="Bahadur–Rao")
    _log_x(ax, ticks=ns)
    ax.set_xlabel("sequence length n")
    ax.set_ylabel(r"$-\frac{1}{n}\log P(R \geq nx)$ (nats)")
    ax.set_title("Tail exponent vs the rate function", fontsize="medium")
    _legend(ax)
    if br is not None:
        ax2 = axes[0, 1]
        for j in range(xx.shape[0]):
            c = _colour(j)
            ax2.plot(
                ns,
                ex[:, j] - br[:, j],
                "-o",
                color=c,
                ms=4,
                label=f"x = {xx[j]:.3g}, exact",
            )
            if mc_log_tail is not None:
                se = (
                    None
                    if mc_log_tail_stderr is None
                    else _arr(mc_log_tail_stderr)[:, j]
                )
                _errorbar(
                    ax2,
                    Points(ns, _arr(mc_log_tail)[:, j] - br[:, j], se),
                    label=None,
                    color=c,
                    marker="o",
                    filled=False,
                )
        ax2.axhline(0.0, color=PALETTE["black"], lw=0.8)
        _log_x(ax2, ticks=ns)
        ax2.set_xlabel("sequence length n")
        ax2.set_ylabel(r"$\log(P / P_{BR})$")
        ax2.set_title("Error after the Bahadur–Rao correction", fontsize="medium")
        _legend(ax2)
    del col
    return fig


# ------------------------------------------------------------------ 5. BoN KL


def best_of_n_kl(panels: Sequence[KLPanel]):
    r"""Best-of-N KL against ``N``: exact (with ties) vs the formula vs the estimator.

    .. math::
        D(\pi_{BoN}\|P) = \sum_c b_c \log\frac{b_c}{q_c} \;\le\; \log N - \frac{N-1}{N}.

    Each :class:`KLPanel` gives one log-x panel: exact curves (solid), estimator
    means (markers, 95% CI), the formula ``log N - (N-1)/N`` (dashed black) and
    optional saturation levels such as ``log L`` (dotted) — Beirami et al.'s
    saturation of the true KL for a uniform law over ``L`` outcomes.

    Args:
      panels: a sequence of :class:`KLPanel`.

    Returns:
      A Figure with ``len(panels)`` axes.

    Examples:
      >>> import numpy as np
      >>> panel = KLPanel("two outcomes", np.array([1, 2, 4]),
      ...                 {"exact": np.array([0.0, 0.1308, 0.2990])})
      >>> best_of_n_kl([panel]).axes[0].get_xscale()
      'log'
    """
    panels = list(panels)
    if not panels or not all(isinstance(p, KLPanel) for p in panels):
        raise ValueError(
            f"panels must be a non-empty sequence of KLPanel, got {panels!r}"
        )
    fig, axes = _figure(ncols=len(panels), width=5.0, height=3.9)
    for ax, panel in zip(axes[0], panels, strict=True):
        num = _arr(panel.num_candidates)
        for i, (label, kl) in enumerate(panel.exact.items()):
            ax.plot(
                num, _arr(kl), "-", color=_colour(i), lw=1.6, label=f"{label}: exact"
            )
            if panel.estimator and label in panel.estimator:
                mean, se = panel.estimator[label]
                _errorbar(
                    ax,
                    Points(num, mean, se),
                    label=f"{label}: estimator",
                    color=_colour(i),
                    marker="o",
                    filled=False,
                )
            if panel.saturation and label in panel.saturation:
                ax.axhline(panel.saturation[label], color=_colour(i), ls=":", lw=1)
        for i, (label, (mean, se)) in enumerate((panel.estimator or {}).items()):
            if label not in panel.exact:
                _errorbar(
                    ax,
                    Points(num, mean, se),
                    label=f"{label}: estimator",
                    color=_colour(i + len(panel.exact)),
                    marker="o",
                    filled=False,
                )
        fine = np.geomspace(max(num.min(), 1.0), num.max(), 128)
        ax.plot(
            fine,
            np.log(fine) - (fine - 1) / fine,
            "--",
            color=PALETTE["black"],
            lw=1.2,
            label=r"formula $\log N-(N-1)/N$",
        )
        _log_x(ax)
        ax.set_xlabel("number of candidates N")
        ax.set_ylabel(r"$D(\pi_{BoN}\|P)$ (nats)")
        ax.set_title(panel.title, fontsize="medium")
        _legend(ax, loc="upper left")
    return fig


# ------------------------------------------------------------------ 6. bounds


def bounds(
    gains: Mapping[str, Curve | Points],
    gain_bounds: Mapping[str, Curve],
    *,
    num_candidates=None,
    divergences: Mapping[str, tuple] | None = None,
):
    r"""Reward gain vs KL against the sub-Gaussian bound, and best-of-N divergences.

    .. math::
        E_\pi r - E_P r \le \sqrt{2\sigma^2 D(\pi\|P)}, \qquad
        D_f(\pi_{BoN}\|P) \le \int_0^1 f(N u^{N-1})\,du.

    Left: achieved gains (``Curve`` solid or ``Points`` with 95% CI) and bounds
    (dashed) against the KL (Mroueh M1, M3, M4).  Right (when ``divergences`` is
    given): exact best-of-N divergences (solid) and their order-statistics bounds
    (dashed) against ``N`` on log axes (M2).

    Args:
      gains: ``{label: Curve or Points}`` with x = KL (nats), y = reward gain.
      gain_bounds: ``{label: Curve}`` bound curves on the same axes.
      num_candidates: ``(G,)`` values of ``N`` for the right panel.
      divergences: ``{name: (exact (G,), bound (G,))}``.

    Returns:
      A Figure with one or two axes.

    Examples:
      >>> import numpy as np
      >>> kl = np.linspace(0.0, 1.0, 5)
      >>> fig = bounds({"gain": Curve(kl, 0.4 * np.sqrt(kl))},
      ...              {"bound": Curve(kl, np.sqrt(0.5 * kl))})
      >>> len(fig.axes[0].lines)
      2
    """
    if not isinstance(gains, Mapping) or not isinstance(gain_bounds, Mapping):
        raise ValueError(
            "gains and gain_bounds must be mappings {label: Curve}, got "
            f"{type(gains).__name__} and {type(gain_bounds).__name__}"
        )
    two = divergences is not None
    if two and num_candidates is None:
        raise ValueError("num_candidates must be given with divergences, got None")
    fig, axes = _figure(ncols=1 + two, width=5.0, height=3.9)
    ax = axes[0, 0]
    for i, (label, g) in enumerate(gains.items()):
        if isinstance(g, Points):
            _errorbar(ax, g, label=label, color=_colour(i), marker="o")
        else:
            ax.plot(_arr(g.x), _arr(g.y), "-", color=_colour(i), lw=1.6, label=label)
            if g.lower is not None:
                ax.fill_between(
                    _arr(g.x),
                    _arr(g.lower),
                    _arr(g.upper),
                    color=_colour(i),
                    alpha=0.2,
                    linewidth=0,
                )
    for i, (label, b) in enumerate(gain_bounds.items()):
        ax.plot(
            _arr(b.x),
            _arr(b.y),
            "--",
            color=_colour(i + len(gains)),
            lw=1.3,
            label=label,
        )
    ax.set_xlabel(r"KL $D(\pi\|P)$ (nats)")
    ax.set_ylabel(r"reward gain $E_\pi[R]-E_P[R]$")
    ax.set_title(
        r"Gain vs the $\sqrt{2\sigma^2\,\mathrm{KL}}$ bound", fontsize="medium"
    )
    _legend(ax, loc="upper left")
    if two:
        ax2 = axes[0, 1]
        num = _arr(num_candidates)
        for i, (name, (ex, bd)) in enumerate(divergences.items()):
            c = _colour(i)
            ax2.plot(num, _arr(ex), "-o", color=c, ms=3, label=f"{name}: exact")
            ax2.plot(num, _arr(bd), "--", color=c, lw=1.2, label=f"{name}: bound")
        _log_x(ax2, y=True)
        ax2.set_xlabel("number of candidates N")
        ax2.set_ylabel("divergence of best-of-N from base")
        ax2.set_title(
            "Best-of-N divergences vs order-statistics bounds", fontsize="medium"
        )
        _legend(ax2, loc="upper left")
    return fig


# ------------------------------------------------------------------ plot_run


def _models(run_dir: pathlib.Path) -> dict:
    from jaxalign.config import ModelSpec

    path = run_dir / "config.json"
    if not path.exists():
        return {}
    cfg = json.loads(path.read_text())
    specs = {}
    for m in cfg.get("models", []):
        specs[m["name"]] = ModelSpec(
            m["name"], m["kind"], tuple(m["params"]), tuple(m["rewards"])
        )
    return specs


def plot_run(run_dir, *, formats: Sequence[str] = ("png", "pdf")) -> list[pathlib.Path]:
    """Write the figures that apply to a run directory, as PNG and PDF.

    Reads ``results.csv`` (and ``config.json`` to rebuild the models for the theory
    curves) and writes into ``run_dir/plots/``:

    - ``bon_vs_rl_<model>_delta<δ>.{png,pdf}`` (:func:`bon_vs_rl`) for each model and
      ``δ`` with points at two or more lengths;
    - ``reward_kl_<model>_n<n>.{png,pdf}`` (:func:`reward_kl`) for each model and
      length holding points with a fixed strength (``lam``, ``kl_budget``,
      ``num_candidates`` or ``temperature``), or whose ``δ`` points sit at a single
      length.

    Args:
      run_dir: a run directory written by :func:`jaxalign.sweep.run_sweep`.
      formats: file formats to write.

    Returns:
      The written paths, sorted.

    Examples:
      >>> paths = plot_run("runs/reward_kl_frontier")  # doctest: +SKIP
    """
    import jax

    from jaxalign import policies
    from jaxalign.store import read_results

    run_dir = pathlib.Path(run_dir)
    if not (run_dir / "results.csv").exists():
        raise ValueError(
            f"run_dir={str(run_dir)!r} has no results.csv; allowed: a "
            "run directory written by jaxalign.sweep.run_sweep"
        )
    formats = tuple(formats)
    if not formats or any(f not in ("png", "pdf", "svg") for f in formats):
        raise ValueError(
            f"formats={formats!r}; allowed: a non-empty subset of ('png', 'pdf', 'svg')"
        )
    rows = read_results(run_dir)
    if not rows:
        return []
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    specs = _models(run_dir)
    points = _points(rows)
    written: list[pathlib.Path] = []

    def save(fig, stem):
        for fmt in formats:
            path = out / f"{stem}.{fmt}"
            fig.savefig(path, dpi=150)
            written.append(path)

    with jax.enable_x64(True):
        for model in sorted({p["model"] for p in points}):
            mine = [p for p in points if p["model"] == model]
            spec = specs.get(model)
            lm, reward = spec.build(1) if spec is not None else (None, None)
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
            deltas = sorted({p["delta"] for p in mine if p.get("delta") is not None})
            single = set()
            for d in deltas:
                lengths = {p["length"] for p in mine if p.get("delta") == d}
                if len(lengths) >= 2:
                    fig = bon_vs_rl(rows, lm, reward, model=model, delta=d)
                    save(fig, f"bon_vs_rl_{safe}_delta{d:g}")
                else:
                    single |= lengths
            for n in sorted({p["length"] for p in mine}):
                at_n = [p for p in mine if p["length"] == n]
                # A policy at a fixed strength (not N = e^{n delta}) at this length.
                has_fixed = any(
                    p.get("delta") is None
                    and any(p.get(k) is not None for k in policies.setting_names())
                    for p in at_n
                )
                if has_fixed or n in single:
                    sub = [r for r in rows if r["model"] == model and r["length"] == n]
                    fig = reward_kl(sub, lm, reward)
                    save(fig, f"reward_kl_{safe}_n{n}")
                    if any(r["quantity"] == "win_rate" and r["mc_mean"] is not None
                           for r in sub):
                        fig = win_rate_kl(sub, lm, reward)
                        save(fig, f"win_rate_kl_{safe}_n{n}")
    return sorted(written)


# -- RL frontier and proxy (Goodhart) figures ------------------------------------------

_RL_MARKERS = {"exact": "*", "reinforce": "o", "ppo": "s", "grpo": "^"}


def _single_axes(ax):
    if ax is None:
        fig, axes = _figure()
        return fig, axes[0, 0]
    return ax.figure, ax


def plot_frontier(data, ax=None):
    """KL-reward frontier (tilt), best-of-N points and trained-policy points.

    Args:
      data: a :class:`jaxalign.rl.FrontierData`.
      ax: optional matplotlib ``Axes`` to draw on.

    Returns:
      The matplotlib ``Figure``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxalign
      >>> from jaxalign import rl
      >>> lm = jaxalign.MemorylessLM.uniform(3, length=4)
      >>> r = jaxalign.LinearReward([0.0, 0.5, 1.0])
      >>> d = rl.frontier_data(jax.random.key(0), lm, r, jnp.array([1.0]),
      ...                      methods=("reinforce",), num_steps=5, batch_size=4)
      >>> fig = plot_frontier(d)
    """
    fig, ax = _single_axes(ax)
    ax.plot(
        np.asarray(data.tilt_kl),
        np.asarray(data.tilt_reward),
        "-",
        color=PALETTE["black"],
        label="frontier (tilt)",
    )
    ax.plot(
        np.asarray(data.bon_kl),
        np.asarray(data.bon_reward),
        ".--",
        color=_colour(0),
        label="best-of-N (exact)",
    )
    for i, method in enumerate(data.methods):
        ax.scatter(
            np.ravel(data.method_kl[i]),
            np.ravel(data.method_reward[i]),
            marker=_RL_MARKERS.get(method, "x"),
            color=_colour(i + 1),
            alpha=0.8,
            label=method,
        )
    ax.set_xlabel("KL(π ‖ P)  [nats, sequence]")
    ax.set_ylabel("E_π[R]")
    ax.legend(frameon=False)
    return fig


def plot_goodhart(data, ax=None):
    """Gold and proxy reward against KL for tilting and best-of-N by the proxy.

    Args:
      data: a :class:`jaxalign.proxy.GoodhartData`.
      ax: optional matplotlib ``Axes``.

    Returns:
      The matplotlib ``Figure``.
    """
    fig, ax = _single_axes(ax)
    order = np.argsort(np.asarray(data.tilt_kl))
    tkl = np.asarray(data.tilt_kl)[order]
    tilt, bon = _colour(1), _colour(0)
    ax.plot(
        tkl,
        np.asarray(data.tilt_proxy_reward)[order],
        "--",
        color=tilt,
        label="tilt: proxy",
    )
    ax.plot(
        tkl,
        np.asarray(data.tilt_gold_reward)[order],
        "-",
        color=tilt,
        label="tilt: gold",
    )
    okl = np.asarray(data.optimal_kl)
    o = np.argsort(okl)
    ax.plot(
        okl[o],
        np.asarray(data.optimal_reward)[o],
        "-",
        lw=0.8,
        color=PALETTE["black"],
        label="gold tilt (no hacking)",
    )
    ax.plot(
        np.asarray(data.bon_kl),
        np.asarray(data.bon_proxy_reward),
        ".--",
        color=bon,
        label="BoN: proxy",
    )
    ax.plot(
        np.asarray(data.bon_kl),
        np.asarray(data.bon_gold_reward),
        ".-",
        color=bon,
        label="BoN: gold",
    )
    ax.set_xlabel("KL(π ‖ P)  [nats, sequence]")
    ax.set_ylabel("expected reward")
    ax.legend(frameon=False)
    return fig
