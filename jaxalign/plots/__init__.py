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
8. :func:`kl_penalty_gradients` — every KL-penalty implementation against
   ``∇KL(q‖p)`` (cosine, relative bias, variance per sample) and the variance of
   the KL values vs ``n`` (issue 13).

:func:`plot_run` writes the figures that apply to a sweep run directory;
:func:`notebook` gives the paper notebooks their size switch and ``show``.
"""

from jaxalign._types import adopt_public_names
from jaxalign.plots._asymptotics import bon_vs_rl as bon_vs_rl
from jaxalign.plots._asymptotics import large_deviations as large_deviations
from jaxalign.plots._asymptotics import scaled_cumulants as scaled_cumulants
from jaxalign.plots._bounds import best_of_n_kl as best_of_n_kl
from jaxalign.plots._bounds import bounds as bounds
from jaxalign.plots._common import PALETTE as PALETTE
from jaxalign.plots._common import Curve as Curve
from jaxalign.plots._common import KLPanel as KLPanel
from jaxalign.plots._common import Points as Points
from jaxalign.plots._frontiers import reward_kl as reward_kl
from jaxalign.plots._frontiers import win_rate_kl as win_rate_kl
from jaxalign.plots._kl_gradients import kl_penalty_gradients as kl_penalty_gradients
from jaxalign.plots._notebook import Notebook as Notebook
from jaxalign.plots._notebook import notebook as notebook
from jaxalign.plots._run import plot_run as plot_run
from jaxalign.plots._training import plot_frontier as plot_frontier
from jaxalign.plots._training import plot_goodhart as plot_goodhart

__all__ = [
    "PALETTE",
    "Curve",
    "KLPanel",
    "Notebook",
    "Points",
    "best_of_n_kl",
    "bon_vs_rl",
    "bounds",
    "kl_penalty_gradients",
    "large_deviations",
    "notebook",
    "plot_frontier",
    "plot_goodhart",
    "plot_run",
    "reward_kl",
    "scaled_cumulants",
    "win_rate_kl",
]

# The public names are documented (and doctested) as members of this package.
adopt_public_names(globals())
