"""plot_run: the figures that apply to a sweep run directory."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from jaxalign.plots._asymptotics import (
    bon_vs_rl,
)
from jaxalign.plots._common import (
    _points,
)
from jaxalign.plots._frontiers import (
    reward_kl,
    win_rate_kl,
)

# ------------------------------------------------------------------ plot_run


def _models(run_dir: pathlib.Path) -> dict:
    from jaxalign.config import ModelSpec

    path = run_dir / "config.json"
    if not path.exists():
        return {}
    cfg = json.loads(path.read_text())
    specs = {}
    for m in cfg.get("models", []):
        specs[m["name"]] = ModelSpec.from_dict(m)
    return specs


def plot_run(run_dir, *, formats: Sequence[str] = ("png", "pdf")) -> list[pathlib.Path]:
    """Write the figures that apply to a run directory, as PNG and PDF.

    Reads ``results.csv`` (and ``config.json`` to rebuild each model at each length
    for the exact and asymptotic curves, through the base-model protocol
    :class:`jaxalign.models.BaseModel`: memoryless models and Markov chains alike)
    and writes into ``run_dir/plots/``:

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

            def build(n, spec=spec):
                # The model at the figure's length, through the config's own
                # constructors (a chain with one matrix per step exists at its n
                # only); every theory curve then goes through the model's protocol.
                return spec.build(n) if spec is not None else (None, None)

            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
            deltas = sorted({p["delta"] for p in mine if p.get("delta") is not None})
            single = set()
            for d in deltas:
                lengths = {p["length"] for p in mine if p.get("delta") == d}
                if len(lengths) >= 2:
                    fig = bon_vs_rl(rows, *build(min(lengths)), model=model, delta=d)
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
                    lm, reward = build(n)
                    fig = reward_kl(sub, lm, reward)
                    save(fig, f"reward_kl_{safe}_n{n}")
                    if any(r["quantity"] == "win_rate" and r["mc_mean"] is not None
                           for r in sub):
                        fig = win_rate_kl(sub, lm, reward)
                        save(fig, f"win_rate_kl_{safe}_n{n}")
    return sorted(written)
