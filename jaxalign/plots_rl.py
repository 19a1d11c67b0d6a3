"""Figures for the RL frontier and the proxy Goodhart curves (matplotlib, lazy import).

The functions only draw: they take the result NamedTuples of
:func:`jaxalign.rl.frontier_data` and :func:`jaxalign.proxy.goodhart_data` and return
the matplotlib ``Figure``.  Importing this module does not import matplotlib.
"""

from __future__ import annotations

import numpy as np

__all__ = ["plot_frontier", "plot_goodhart"]

_MARKERS = {"exact": "*", "reinforce": "o", "ppo": "s", "grpo": "^"}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.0))
        return fig, ax
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
    fig, ax = _axes(ax)
    ax.plot(np.asarray(data.tilt_kl), np.asarray(data.tilt_reward), "k-",
            label="frontier (tilt)")
    ax.plot(np.asarray(data.bon_kl), np.asarray(data.bon_reward), "C0.--",
            label="best-of-N (exact)")
    for i, method in enumerate(data.methods):
        ax.scatter(np.ravel(data.method_kl[i]), np.ravel(data.method_reward[i]),
                   marker=_MARKERS.get(method, "x"), color=f"C{i + 1}", alpha=0.8,
                   label=method)
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
    fig, ax = _axes(ax)
    order = np.argsort(np.asarray(data.tilt_kl))
    tkl = np.asarray(data.tilt_kl)[order]
    ax.plot(tkl, np.asarray(data.tilt_proxy_reward)[order], "C1--",
            label="tilt: proxy")
    ax.plot(tkl, np.asarray(data.tilt_gold_reward)[order], "C1-", label="tilt: gold")
    okl = np.asarray(data.optimal_kl)
    o = np.argsort(okl)
    ax.plot(okl[o], np.asarray(data.optimal_reward)[o], "k-", lw=0.8,
            label="gold tilt (no hacking)")
    ax.plot(np.asarray(data.bon_kl), np.asarray(data.bon_proxy_reward), "C0.--",
            label="BoN: proxy")
    ax.plot(np.asarray(data.bon_kl), np.asarray(data.bon_gold_reward), "C0.-",
            label="BoN: gold")
    ax.set_xlabel("KL(π ‖ P)  [nats, sequence]")
    ax.set_ylabel("expected reward")
    ax.legend(frameon=False)
    return fig
