"""KL-penalty gradients (issue 13): each implementation against the true gradient,
and the variance of the KL values against the sequence length."""

from __future__ import annotations

import numpy as np

from jaxalign.plots._common import PALETTE, _arr, _colour, _figure, _legend

# One colour per divergence an implementation's expected gradient is the gradient of.
_DIVERGENCE_COLOURS = {
    "KL(q||p)": PALETTE["green"],
    "partial KL(q||p)": PALETTE["sky_blue"],
    "KL(p||q)": PALETTE["vermillion"],
    "partial KL(p||q)": PALETTE["orange"],
    "KL(q||p) - KL(p||q)": PALETTE["purple"],
    "0": PALETTE["black"],
    "none": PALETTE["yellow"],
}
_OTHER = "#999999"
_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty_gradients(summary, values=None, *, title: str | None = None):
    r"""Every KL-penalty implementation against ``∇KL(q‖p)``, and the value
    variance against ``n``.

    Three bar panels, one bar per implementation (``estimator/placement/level``,
    with the weighting appended when it is not on-policy), coloured by the
    divergence its expected gradient is the gradient of: the cosine with
    ``∇KL(q‖p)`` (no bar where the expected gradient vanishes), the relative bias
    ``‖E g − ∇KL(q‖p)‖ / ‖∇KL(q‖p)‖`` and the variance per sample
    ``tr Cov[g]`` (log scale).  With ``values``, a fourth panel: the exact variance
    under ``q`` of the token-summed values ``Σ_t k(ℓ_t)`` (solid) and of the
    sequence-level values ``k(ℓ)`` (dashed) against the prefix length (log
    scale), for ``k1``, ``k2``, ``k3``.

    Args:
      summary: a :class:`jaxalign.kl_gradients.Summary`.
      values: optional :class:`jaxalign.kl_gradients.ValueMoments`.
      title: figure title (default: the two KLs of the summary).

    Returns:
      The matplotlib ``Figure``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxalign
      >>> from jaxalign import kl_gradients as kg
      >>> p = jaxalign.MarkovLM.sticky([0.6, 0.4], 0.5, length=4)
      >>> params = (jnp.array([0.3, 0.0]), jnp.array([[0.5, 0.0], [0.0, 0.2]]))
      >>> rows = [i for i in kg.GRID if i.weighting == "on_policy"]
      >>> fig = kl_penalty_gradients(kg.summary(params, p, implementations=rows),
      ...                            kg.value_moments(params, p))
      >>> len(fig.axes)
      4
    """
    impls = tuple(summary.implementations)
    if not impls:
        raise ValueError("summary must hold at least one implementation, got none")
    num = len(impls)
    labels = ["/".join(i[:3]) + ("" if i.weighting == "on_policy"
                                 else f" ({i.weighting})") for i in impls]
    colours = [_DIVERGENCE_COLOURS.get(d, _OTHER) for d in summary.divergence]
    cosine, bias = _arr(summary.cosine), _arr(summary.relative_bias)
    variance = _arr(summary.variance)

    height = 1.6 + 0.24 * num
    if values is None:
        fig, axes = _figure(ncols=3, width=3.6, height=height)
        bars = axes[0]
    else:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3.6 * 3, height + 3.4), layout="constrained")
        grid = fig.add_gridspec(2, 3, height_ratios=[height, 3.4])
        first = fig.add_subplot(grid[0, 0])
        bars = [first, fig.add_subplot(grid[0, 1], sharey=first),
                fig.add_subplot(grid[0, 2], sharey=first)]
        value_ax = fig.add_subplot(grid[1, :])
        for ax in [*bars, value_ax]:
            ax.grid(True, alpha=0.3, linewidth=0.6)
    y = np.arange(num)
    ax_cos, ax_bias, ax_var = bars
    vanishes = ~np.isfinite(cosine)
    ax_cos.barh(y, np.where(vanishes, 0.0, cosine), color=colours, edgecolor="black",
                linewidth=0.4)
    for j in np.flatnonzero(vanishes):
        ax_cos.text(0.02, y[j], "zero gradient", va="center", fontsize="x-small")
    ax_cos.axvline(0.0, color="black", linewidth=0.6)
    ax_cos.axvline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax_cos.set_xlim(-1.05, 1.05)
    ax_cos.set_xlabel("cosine with ∇KL(q‖p)")
    ax_bias.barh(y, bias, color=colours, edgecolor="black", linewidth=0.4)
    ax_bias.set_xlabel("‖E g − ∇KL(q‖p)‖ / ‖∇KL(q‖p)‖")
    positive = variance > 0
    ax_var.barh(y[positive], variance[positive], color=np.asarray(colours)[positive],
                edgecolor="black", linewidth=0.4)
    if np.any(positive):
        ax_var.set_xscale("log")
    ax_var.set_xlabel("tr Cov[g] (one sample, log scale)")
    for ax in bars:
        ax.set_ylim(num - 0.5, -0.5)  # first row on top
        ax.grid(True, axis="x", alpha=0.3, linewidth=0.6)
        ax.grid(False, axis="y")
    ax_cos.set_yticks(y, labels=labels, fontsize="small")
    for ax in (ax_bias, ax_var):
        ax.tick_params(axis="y", labelleft=False)
    ax_cos.set_title("direction: cosine", fontsize="medium")
    ax_bias.set_title("bias: relative error", fontsize="medium")
    ax_var.set_title("noise: variance per sample", fontsize="medium")
    from matplotlib.patches import Patch

    seen = dict.fromkeys(summary.divergence)
    handles = [Patch(facecolor=_DIVERGENCE_COLOURS.get(d, _OTHER), edgecolor="black",
                     linewidth=0.4, label=f"∇ {d}" if d not in ("0", "none") else
                     {"0": "no gradient (0)", "none": "∇ of no divergence"}[d])
               for d in seen]
    fig.legend(handles=handles, title="expected gradient is", fontsize="small",
               title_fontsize="small", loc="outside lower center",
               ncols=min(len(handles), 4), framealpha=0.85)

    if values is not None:
        length = _arr(values.length)
        for e, est in enumerate(_ESTIMATORS):
            colour = _colour(e)
            for field, style, level in (("token_variance", "-", "token-summed"),
                                        ("sequence_variance", "--", "sequence")):
                v = _arr(getattr(values, field))[e]
                ok = v > 0
                value_ax.plot(length[ok], v[ok], style, color=colour, marker=".",
                              label=f"{est}, {level}")
        value_ax.set_yscale("log")
        value_ax.set_xlabel("sequence length n (prefix)")
        value_ax.set_ylabel("Var_q of the KL value")
        value_ax.set_title("value variance: Σ_t k(ℓ_t) (solid) vs k(Σ_t ℓ_t) "
                           "(dashed)", fontsize="medium")
        _legend(value_ax, ncols=3, loc="lower right")
    if title is None:
        title = (f"KL-penalty gradients at KL(q‖p) = {float(summary.kl_qp):.4g}, "
                 f"KL(p‖q) = {float(summary.kl_pq):.4g} (exact)")
    fig.suptitle(title, fontsize="medium")
    return fig
