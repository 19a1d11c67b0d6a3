"""Best-of-N KL (Beirami et al.) and the divergence bounds (Mroueh)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jaxalign.plots._common import (
    PALETTE,
    Curve,
    KLPanel,
    Points,
    _arr,
    _colour,
    _errorbar,
    _figure,
    _legend,
    _log_x,
)

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
