"""Shared plotting pieces: the palette, point and curve types, axes helpers and
the reading of run rows."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

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
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

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
            # Within one decade there is no major tick: label the minor ones.
            decade = math.floor(math.log10(hi)) > math.floor(math.log10(lo))
            axis.set_minor_formatter(NullFormatter() if decade else
                                     FuncFormatter(lambda v, _: f"{v:.3g}"))


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


def _seq_axes(ax, n: int, *, x=True, y=True):
    """Secondary axes in sequence units (per-token value times ``n``)."""
    if x:
        sx = ax.secondary_xaxis("top", functions=(lambda v: v * n, lambda v: v / n))
        sx.set_xlabel(f"sequence KL (nats, n = {n})", fontsize="small")
    if y:
        sy = ax.secondary_yaxis("right", functions=(lambda v: v * n, lambda v: v / n))
        sy.set_ylabel("sequence reward E[R]", fontsize="small")
