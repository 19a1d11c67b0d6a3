"""RL training figures: the trained policies against the frontier, Goodhart."""

from __future__ import annotations

import numpy as np

from jaxalign.plots._common import (
    PALETTE,
    _colour,
    _figure,
)

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
      ...                      algorithms=("reinforce",), num_steps=5, batch_size=4)
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
    for i, algorithm in enumerate(data.algorithms):
        ax.scatter(
            np.ravel(data.algorithm_kl[i]),
            np.ravel(data.algorithm_reward[i]),
            marker=_RL_MARKERS.get(algorithm, "x"),
            color=_colour(i + 1),
            alpha=0.8,
            label=algorithm,
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
