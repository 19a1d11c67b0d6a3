"""What the paper notebooks share: their size switch and how they show figures."""

from __future__ import annotations

import builtins
import os
import pathlib
from collections.abc import Callable
from typing import NamedTuple


class Notebook(NamedTuple):
    """A notebook's settings (see :func:`notebook`).

    Attributes:
      small: ``JAXALIGN_NOTEBOOK_SMALL=1``: the tiny, fast version (tests, CI).
      show: ``show(fig, name)``: display inline in Jupyter; save
        ``<out>/<prefix>_<name>.png`` when an output folder is set (always, run as
        a script: ``JAXALIGN_NOTEBOOK_OUT``, default ``runs/notebooks``).
    """

    small: bool
    show: Callable


def notebook(prefix: str) -> Notebook:
    """The settings of a notebook whose figures are named ``<prefix>_<name>.png``;
    turns on float64 (``jax_enable_x64``), which the notebooks' exact values need.

    Examples:
      >>> import os
      >>> small, show = notebook("demo")
      >>> small == (os.environ.get("JAXALIGN_NOTEBOOK_SMALL") == "1")
      True
    """
    import jax

    small = os.environ.get("JAXALIGN_NOTEBOOK_SMALL") == "1"
    in_jupyter = hasattr(builtins, "get_ipython")
    out = os.environ.get("JAXALIGN_NOTEBOOK_OUT") or (
        None if in_jupyter else "runs/notebooks")
    if not jax.config.jax_enable_x64:  # (the tests run notebooks inside enable_x64)
        jax.config.update("jax_enable_x64", True)

    def show(fig, name: str) -> None:
        if out:
            path = pathlib.Path(out) / f"{prefix}_{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=80)
            print(f"figure saved to {path}")
        if in_jupyter:
            from IPython.display import display

            display(fig)

    return Notebook(small, show)
