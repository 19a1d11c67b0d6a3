"""Figures of the n -> infinity theory: best-of-N vs RL (Yang et al.), scaled
cumulants and SCGF, large deviations."""

from __future__ import annotations

import numpy as np

from jaxalign.plots._common import (
    PALETTE,
    Points,
    _arr,
    _band,
    _check_rows,
    _colour,
    _errorbar,
    _figure,
    _legend,
    _log_x,
    _mc,
    _pick,
    _points,
    _val,
)

# ------------------------------------------------------------------ 2. BoN vs RL


def _lam_delta(lm, reward, delta: float) -> float | None:
    """``λ_δ``, the tilt whose KL rate is ``δ`` per token, from the model's own
    ``lam_for_kl_rate`` (a chain's Perron root), or ``None`` without a model or
    where the model has no rate (a chain that is not primitive)."""
    if lm is None:
        return None
    if reward is None:
        raise ValueError("reward must be given with lm, got None")
    try:
        return float(lm.lam_for_kl_rate(reward, delta))
    except ValueError:
        return None



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
    _legend(ax_kl, loc="best")
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
        lam = _lam_delta(lm, reward, delta)
        if lam is not None:
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
