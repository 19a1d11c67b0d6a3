"""Sweeps: Monte Carlo over a grid of points, with exact and asymptotic values beside.

:func:`run_sweep` executes a :class:`~jaxalign.config.SweepConfig`:

- Points sharing a compiled shape (method, sampling level, length, K, N, lattice size)
  form a group; each group is **one compiled program**, ``vmap``-ed over work items.
- A work item is a block of :data:`BLOCK` replicates of one point, with key
  ``fold_in(fold_in(key(seed), point.key_data), block)``.  The numbers therefore depend
  only on the seed and the point, never on ``chunk_size``, the device count, the
  process count or which other points the grid holds.
- Work items are processed ``chunk_size`` replicates at a time (bounded memory), sharded
  over every device of every process (``jax.sharding.NamedSharding`` on a 1-d mesh;
  several hosts through ``jax.distributed.initialize()``), and gathered with
  ``multihost_utils.process_allgather``.  Reductions (means, standard errors) run on the
  host in float64 in a fixed order, so they are bit-for-bit reproducible as well.
- Each finished point is appended to the run directory (:mod:`jaxalign.store`) at once;
  ``resume=True`` skips the points already there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxalign
from jaxalign import exact, sample, theory
from jaxalign.config import Point, SweepConfig, grid_points
from jaxalign.models import LinearReward, MemorylessLM
from jaxalign.store import RunStore

__all__ = ["BLOCK", "SweepSummary", "environment", "run_sweep", "summary_table"]

BLOCK = 128  # replicates per work item; fixed, so results never depend on chunking


@dataclasses.dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: the run directory, the points run and skipped, and timing."""

    run_dir: str
    num_points: int
    num_skipped: int
    num_samples: int
    seconds: float


def environment(config: SweepConfig) -> dict:
    """The environment recorded with a run."""
    devices = jax.devices()
    return {
        "jaxalign": jaxalign.__version__,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "prng_impl": config.prng,
        "x64": bool(jax.config.jax_enable_x64),
        "host": platform.node(),
    }


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on stderr: points done, samples/s, ETA."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.samples = total, 0, 0
        self.enabled = enabled
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, points: int = 0, samples: int = 0, force: bool = False):
        self.done += points
        self.samples += samples
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and not force):
            return
        self.last = now
        elapsed = now - self.start
        rate = self.samples / elapsed if elapsed > 0 else 0.0
        frac = self.done / self.total if self.total else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        width = 24
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        eta_text = f"{eta:5.0f}s" if math.isfinite(eta) else "    ?"
        sys.stderr.write(
            f"\r[{bar}] {self.done}/{self.total} points  {rate:10.3g} samples/s  "
            f"ETA {eta_text}"
        )
        sys.stderr.flush()

    def close(self):
        if self.enabled:
            self.update(force=True)
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------------------
# Sharded execution of work items
# --------------------------------------------------------------------------------------
def _mesh(prng: str) -> Mesh:
    devices = jax.devices()
    if prng == "philox4x32" and devices[0].platform == "cpu" and len(devices) > 1:
        # philox4x32 does not lower under multi-device sharding on CPU (JAX 0.10);
        # results do not depend on the device count, so run on one device.
        devices = devices[:1]
    return Mesh(np.array(devices), ("items",))


@functools.cache
def _compiled(block_fn: Callable, prng: str, mesh: Mesh):
    """One jitted program per block function (shapes add entries to jit's own cache)."""
    sharding = NamedSharding(mesh, PartitionSpec("items"))

    def run(key_data, params):
        keys = jax.random.wrap_key_data(key_data, impl=prng)
        return jax.vmap(block_fn)(keys, params)

    return jax.jit(run, out_shardings=sharding), sharding


def _global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A globally sharded array from a host array every process holds in full."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def run_items(block_fn, prng, key_data, params, *, items_per_chunk):
    """Evaluate ``block_fn(key, params_i)`` for every work item, sharded and chunked.

    ``key_data`` is ``(I, ...)`` raw key data, ``params`` a pytree of ``(I, ...)``
    host arrays.  Yields ``(stop, outputs)`` per chunk, where ``outputs`` is the pytree
    of numpy results of items ``[stop - len, stop)``, in order.
    """
    mesh = _mesh(prng)
    program, sharding = _compiled(block_fn, prng, mesh)
    num_items = key_data.shape[0]
    num_dev = mesh.devices.size
    # Never pad a small group up to a full chunk: that would compute discarded items.
    chunk = min(items_per_chunk, num_items)
    chunk = -(-chunk // num_dev) * num_dev
    for start in range(0, num_items, chunk):
        stop = min(start + chunk, num_items)
        # Pad the last chunk with copies of its last item: one shape, one compile.
        take = np.minimum(np.arange(start, start + chunk), stop - 1)
        args = jax.tree.map(
            lambda a, take=take: _global(np.asarray(a)[take], sharding),
            (key_data, params),
        )
        out = multihost_utils.process_allgather(program(*args), tiled=True)
        yield stop, jax.tree.map(lambda a, n=stop - start: np.asarray(a)[:n], out)


def point_key_data(config: SweepConfig, point: Point) -> np.ndarray:
    """Raw key data ``(1, ...)`` of a point: ``fold_in(key(seed), point.key_data)``.

    Sample ``i`` of the point then uses ``fold_in(point_key, i)`` inside the samplers,
    so the sweep's draws equal a direct call such as
    ``sample.best_of_n(point_key, lm, reward, N, replicates)``.
    """
    key = jax.random.key(config.seed, impl=config.prng)
    key = jax.random.fold_in(key, point.key_data)
    return np.asarray(jax.random.key_data(key))[None]


# --------------------------------------------------------------------------------------
# Host-side reductions (float64, fixed order)
# --------------------------------------------------------------------------------------
def mean_stderr(x: np.ndarray) -> tuple[float, float, int]:
    """Sample mean, its standard error and the count."""
    x = np.asarray(x, dtype=np.float64)
    m = x.size
    se = float(np.std(x, ddof=1) / math.sqrt(m)) if m > 1 else float("nan")
    return float(np.mean(x)), se, m


def variance_stderr(x: np.ndarray) -> tuple[float, float, int]:
    """Unbiased sample variance (k-statistic k2) and its large-sample standard error,
    ``sqrt((m4 - s^4 (m-3)/(m-1)) / m)``."""
    x = np.asarray(x, dtype=np.float64)
    m = x.size
    if m < 4:
        return float("nan"), float("nan"), m
    d = x - np.mean(x)
    s2 = float(np.sum(d * d) / (m - 1))
    m4 = float(np.mean(d**4))
    se = math.sqrt(max(m4 - s2 * s2 * (m - 3) / (m - 1), 0.0) / m)
    return s2, se, m


# --------------------------------------------------------------------------------------
# Grid points: what to sample (a block function) and what to compare it with
# --------------------------------------------------------------------------------------
_WIN_KEY = 0x5EED  # the independent base draw a best-of-N sample is compared with


class _Prepared(NamedTuple):
    point: Point
    block_fn: _Block
    params: dict  # host arrays for one point
    rows: Callable  # draws {"name": (replicates,)} -> list of result rows


@dataclasses.dataclass(frozen=True)
class _Block:
    """What one work item samples: ``BLOCK`` replicates of a point, from sample index
    ``first``. Hashable by value, so equal shapes share one compiled program."""

    method: str
    length: int | None  # static at the token level; a parameter at the law level
    law_level: bool
    num_candidates: int | None = None

    def __call__(self, key, params):
        first = params["first"]
        if self.law_level:
            r, base = self._law(key, params, first)
        else:
            r, base = self._token(key, params, first)
        out = {"reward": r / params["length"]}
        if base is not None:
            out["win"] = _win(r, base)
        return out

    def _token(self, key, params, first):
        lm = MemorylessLM.tree_unflatten(self.length, (params["log_probs"],))
        reward = LinearReward.tree_unflatten(None, (params["token_rewards"],))
        if self.method == "base":
            return sample.rewards(key, lm, reward, BLOCK, first_index=first), None
        if self.method == "tilted":
            lam = params["lam"]
            return sample.tilted(key, lm, reward, lam, BLOCK, first_index=first), None
        if self.method == "best_of_n":
            r = sample.best_of_n(
                key, lm, reward, self.num_candidates, BLOCK, first_index=first
            ).reward
        else:
            r = sample.soft_best_of_n(
                key,
                lm,
                reward,
                self.num_candidates,
                params["temperature"],
                BLOCK,
                first_index=first,
            ).reward
        win_key = jax.random.fold_in(key, _WIN_KEY)
        return r, sample.rewards(win_key, lm, reward, BLOCK, first_index=first)

    def _law(self, key, params, first):
        def draw(k, log_num):
            return sample.best_of_n_from_law(
                k,
                params["values"],
                params["log_pmf"],
                None,
                BLOCK,
                log_num_candidates=log_num,
                first_index=first,
            )

        r = draw(key, params["log_num"])
        if self.method != "best_of_n":
            return r, None
        win_key = jax.random.fold_in(key, _WIN_KEY)
        return r, draw(win_key, jnp.zeros_like(params["log_num"]))


def _win(r, base):
    """Win indicator against an independent base draw, ties counting one half."""
    return jnp.where(r > base, 1.0, jnp.where(r == base, 0.5, 0.0)).astype(r.dtype)


def _lam(point: Point, lm, reward):
    if point.lam is not None:
        return point.lam
    budget = (
        point.kl_budget if point.kl_budget is not None else point.delta * point.length
    )
    top = float(theory.max_kl(lm, reward))
    if not budget < top:
        raise ValueError(
            f"point {point.tag}: the KL budget {budget:.6g} is not below the "
            f"maximum -n log p(A_max) = {top:.6g} of this model; allowed: < {top:.6g}"
        )
    return float(theory.lam_for_kl(lm, reward, budget))


def _prepare(config: SweepConfig, spec, point: Point) -> _Prepared:
    lm, reward = spec.build(point.length)
    dtype = lm.log_probs.dtype
    n = point.length
    method = point.method
    law_level = config.sampling == "law" and method in ("base", "tilted", "best_of_n")
    params = {"length": np.asarray(n, dtype)}
    lam = None
    if method == "tilted":
        lam = _lam(point, lm, reward)
        params["lam"] = np.asarray(lam, dtype)
    if method == "soft_best_of_n":
        params["temperature"] = np.asarray(point.temperature, dtype)
    # The base law of R: best-of-N's exact values and, at the law level, its draws.
    base_law = exact.reward_law(lm, reward) if method == "best_of_n" else None
    if law_level:
        if method == "best_of_n":
            law = base_law
        else:
            target = theory.tilt(lm, reward, lam) if method == "tilted" else lm
            law = exact.reward_law(target, reward)
        params["values"] = np.asarray(law.values, dtype)
        params["log_pmf"] = np.asarray(law.log_pmf, dtype)
        log_num = point.log_num_candidates if method == "best_of_n" else 0.0
        params["log_num"] = np.asarray(log_num, dtype)
        # Base and tilted draws differ only in their law: one program for both.
        kind = "best_of_n" if method == "best_of_n" else "law"
        block_fn = _Block(kind, None, law_level=True)
    else:
        if method == "best_of_n" and point.num_candidates is None:
            raise ValueError(
                f"point {point.tag}: N = e^{point.log_num_candidates:.4g} is too large "
                'for token-level sampling; use sampling = "law"'
            )
        params["log_probs"] = np.asarray(lm.log_probs)
        params["token_rewards"] = np.asarray(reward.token_rewards)
        block_fn = _Block(method, n, False, point.num_candidates)
    rows = functools.partial(
        _rows, point=point, lm=lm, reward=reward, lam=lam, base_law=base_law
    )
    return _Prepared(point, block_fn, params, rows)


def _row(quantity, draws=None, exact_value=None, asymptotic=None, *, stat=mean_stderr):
    row = {
        "quantity": quantity,
        "exact": _float(exact_value),
        "asymptotic": _float(asymptotic),
    }
    if draws is not None:
        row["mc_mean"], row["mc_stderr"], row["mc_count"] = stat(draws)
    return row


def _float(x):
    return None if x is None else float(x)


def _rows(draws, *, point: Point, lm, reward, lam, base_law):
    """The tidy rows of one point: Monte Carlo beside exact and asymptotic values."""
    n = point.length
    r = draws["reward"]
    if point.method == "base":
        mean, var = theory.cumulants(lm, reward, 2)
        return [
            _row("reward_per_token", r, mean, mean),
            _row(
                "variance_per_token", r * math.sqrt(n), var, var, stat=variance_stderr
            ),
        ]
    if point.method == "tilted":
        mean, var = theory.cumulants(lm, reward, 2, lam)
        kl = float(theory.kl(lm, reward, lam)) / n
        # log(dPhi/dP)(y) / n = lam R/n - Lambda(lam): an unbiased KL estimate.
        log_ratio = lam * r - float(theory.log_mgf(lm, reward, lam))
        return [
            _row("reward_per_token", r, mean, mean),
            _row(
                "variance_per_token", r * math.sqrt(n), var, var, stat=variance_stderr
            ),
            _row("kl_per_token", log_ratio, kl, point.delta if point.delta else kl),
        ]
    log_n = point.log_num_candidates
    rows = []
    if point.method == "best_of_n":
        lam_delta = x_star = None
        if point.delta is not None:
            lam_delta = float(theory.lam_for_kl(lm, reward, point.delta * n))
            x_star = theory.best_of_n_asymptotic_reward(lm, reward, point.delta)
        bon = exact.best_of_n_from_law(
            base_law, log_num_candidates=log_n, lam=lam_delta
        )
        bound = theory.best_of_n_kl_bound(log_num_candidates=log_n)
        rows += [
            _row("reward_per_token", r, float(bon.expected_reward) / n, x_star),
            _row("win_rate", draws["win"], bon.win_rate),
            _row("kl_per_token", None, float(bon.kl) / n, point.delta),
            _row("kl_bound_per_token", None, float(bound) / n),
        ]
        if lam_delta is not None:
            to_tilt = float(bon.kl_to_tilted) / n
            rows.append(_row("kl_to_tilted_per_token", None, to_tilt, 0.0))
        return rows
    # Soft best-of-N: N -> infinity gives the tilt at lam = 1/temperature.
    limit = theory.cumulants(lm, reward, 1, 1.0 / point.temperature)[0]
    return [_row("reward_per_token", r, None, limit), _row("win_rate", draws["win"])]


def _prepare_all(config: SweepConfig) -> list[_Prepared]:
    """Every grid point prepared (and so validated) before anything runs.

    Law-level points are padded to one support size (a power of two, zero-probability
    points above the top), so a whole law-level sweep needs two programs.
    """
    specs = {s.name: s for s in config.models}
    prepared = [_prepare(config, specs[p.model], p) for p in grid_points(config)]
    sizes = [len(p.params["values"]) for p in prepared if "values" in p.params]
    if sizes:
        size = 1 << (max(sizes) - 1).bit_length()
        prepared = [_pad_law(p, size) if "values" in p.params else p for p in prepared]
    return prepared


def _groups(prepared: list[_Prepared]) -> list[list[_Prepared]]:
    """Prepared points grouped by compiled shape, in grid order within a group."""
    groups: dict = {}
    for p in prepared:
        shapes = tuple(
            (k, np.shape(v), np.asarray(v).dtype.str)
            for k, v in sorted(p.params.items())
        )
        groups.setdefault((p.block_fn, shapes), []).append(p)
    return list(groups.values())


def _pad_law(prepared: _Prepared, size: int) -> _Prepared:
    values, log_pmf = prepared.params["values"], prepared.params["log_pmf"]
    extra = size - len(values)
    step = values[-1] - values[-2] if len(values) > 1 else 1.0
    pad_values = values[-1] + step * np.arange(1, extra + 1, dtype=values.dtype)
    params = dict(
        prepared.params,
        values=np.concatenate([values, pad_values]),
        log_pmf=np.concatenate([log_pmf, np.full(extra, -np.inf, log_pmf.dtype)]),
    )
    return prepared._replace(params=params)


# --------------------------------------------------------------------------------------
# The sweep loop
# --------------------------------------------------------------------------------------
def _point_fields(point: Point, sampling: str) -> dict:
    fields = dataclasses.asdict(point)
    fields["point"] = point.tag
    fields["sampling"] = sampling
    del fields["index"]
    return fields


def run_sweep(
    config: SweepConfig,
    out: str | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
) -> SweepSummary:
    """Run a sweep and write its run directory.

    Args:
      config: a validated :class:`~jaxalign.config.SweepConfig`.
      out: the run directory (default: ``config.out`` or ``runs/<config.name>``).
      resume: continue an interrupted run in ``out``, skipping finished points; the
        result is identical to an uninterrupted run.
      progress: show a progress bar on stderr (points, samples/s, ETA).

    Returns:
      A :class:`SweepSummary`.

    Examples:
      >>> from jaxalign import config, sweep
      >>> cfg = config.parse_config(tomllib.loads(text))  # doctest: +SKIP
      >>> sweep.run_sweep(cfg, "runs/demo")  # doctest: +SKIP
    """
    out = out or config.out or f"runs/{config.name}"
    with jax.enable_x64(config.x64):
        prepared = _prepare_all(config)
        is_writer = jax.process_index() == 0
        store = None
        done: set[str] = set()
        if is_writer:
            store = RunStore(out, config.to_dict(), environment(config), resume=resume)
            done = set(store.done)
        done = _broadcast_done(done)
        todo = [p for p in prepared if p.point.tag not in done]
        bar = _Progress(len(prepared), enabled=progress and is_writer)
        bar.update(points=len(prepared) - len(todo), force=True)
        t0 = time.perf_counter()
        num_samples = 0
        items_per_chunk = max(1, config.chunk_size // BLOCK)
        num_blocks = -(-config.replicates // BLOCK)
        try:
            for group in _groups(todo):
                block_fn = group[0].block_fn
                # Item b of a point: its key, and sample indices [b BLOCK, (b+1) BLOCK).
                key_data = np.concatenate(
                    [
                        np.repeat(point_key_data(config, g.point), num_blocks, axis=0)
                        for g in group
                    ]
                )
                firsts = np.arange(num_blocks, dtype=np.uint32) * BLOCK
                params = jax.tree.map(
                    lambda *xs: np.concatenate(
                        [np.repeat(np.asarray(x)[None], num_blocks, axis=0) for x in xs]
                    ),
                    *[dict(g.params, first=firsts[0]) for g in group],
                )
                params["first"] = np.tile(firsts, len(group))
                pending: list = []
                flushed = 0
                for stop, chunk_out in run_items(
                    block_fn,
                    config.prng,
                    key_data,
                    params,
                    items_per_chunk=items_per_chunk,
                ):
                    pending.append(chunk_out)
                    bar.update(samples=len(chunk_out["reward"]) * BLOCK)
                    # Flush every point whose blocks have all arrived.
                    while (flushed + 1) * num_blocks <= stop:
                        results = jax.tree.map(lambda *xs: np.concatenate(xs), *pending)
                        take = num_blocks
                        draws = {
                            k: v[:take].reshape(-1)[: config.replicates]
                            for k, v in results.items()
                        }
                        pending = [jax.tree.map(lambda v, t=take: v[t:], results)]
                        g = group[flushed]
                        rows = [
                            dict(_point_fields(g.point, config.sampling), **row)
                            for row in g.rows(draws)
                        ]
                        if store is not None:
                            store.append(rows, g.point.tag)
                        num_samples += config.replicates
                        flushed += 1
                        bar.update(points=1, force=True)
        finally:
            bar.close()
        return SweepSummary(
            run_dir=str(out),
            num_points=len(todo),
            num_skipped=len(prepared) - len(todo),
            num_samples=num_samples,
            seconds=time.perf_counter() - t0,
        )


def _broadcast_done(done: set[str]) -> set[str]:
    """Every process learns which points process 0 found finished (resume)."""
    if jax.process_count() == 1:
        return done
    import json

    text = json.dumps(sorted(done)).encode()
    length = multihost_utils.broadcast_one_to_all(np.int64(len(text)))
    buf = np.zeros(int(length), np.uint8)
    buf[: len(text)] = np.frombuffer(text, np.uint8)[: int(length)]
    buf = multihost_utils.broadcast_one_to_all(buf)
    return set(json.loads(bytes(np.asarray(buf)).decode()))


def summary_table(rows: list[dict]) -> str:
    """A compact text table of a run's results: one line per point and quantity."""
    header = (
        f"{'model':<14} {'n':>6} {'method':<14} {'setting':<16} {'quantity':<24}"
        f" {'Monte Carlo':>22} {'exact':>12} {'asymptotic':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["lam"] is not None:
            setting = f"lam={r['lam']:.4g}"
        elif r["kl_budget"] is not None:
            setting = f"KL={r['kl_budget']:.4g}"
        elif r["delta"] is not None:
            setting = f"delta={r['delta']:.4g}"
        elif r["log_num_candidates"] is not None:
            setting = f"N={math.exp(r['log_num_candidates']):.4g}"
        else:
            setting = ""
        if r["temperature"] is not None:
            setting += f" T={r['temperature']:.3g}"
        mc = (
            f"{r['mc_mean']:.6f} ± {r['mc_stderr']:.1e}"
            if r["mc_mean"] is not None
            else ""
        )
        exact_text = f"{r['exact']:.6f}" if r["exact"] is not None else ""
        asym = f"{r['asymptotic']:.6f}" if r["asymptotic"] is not None else ""
        lines.append(
            f"{r['model'][:14]:<14} {r['length']:>6} {r['method']:<14} {setting:<16}"
            f" {r['quantity']:<24} {mc:>22} {exact_text:>12} {asym:>12}"
        )
    return "\n".join(lines)
