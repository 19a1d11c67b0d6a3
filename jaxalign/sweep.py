"""Sweeps: Monte Carlo over a grid of points, with exact and asymptotic values beside.

:func:`run_sweep` executes a :class:`~jaxalign.config.SweepConfig`:

- Points sharing a compiled program form a group, ``vmap``-ed over work items.  A
  program is one per policy and sampling level (and length at the token level, whose
  random words depend on it): strengths, ``N``, temperatures and lattice sizes are
  traced values or padded (laws to one power-of-two support), so a grid over them
  compiles once.
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
from jaxalign import estimators, exact, policies, sample
from jaxalign._types import classic_threefry
from jaxalign.config import Point, SweepConfig, grid_points
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
def _progress(total: int, done: int, enabled: bool):
    """A tqdm bar on stderr over grid points, with the sampling rate as postfix."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="pt", desc="points", file=sys.stderr,
                disable=not enabled, dynamic_ncols=True)


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

    def run(key_data, items, shared):
        # Item i reads its point's row of the shared (per-point) arrays: a point's
        # parameters (a law of size M) are sent once, not once per block.
        keys = jax.random.wrap_key_data(key_data, impl=prng)

        def one(key, item):
            params = jax.tree.map(lambda a: a[item["point"]], shared)
            return block_fn(key, dict(params, first=item["first"]))

        return jax.vmap(one)(keys, items)

    return jax.jit(run, out_shardings=sharding), sharding


def _global(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A globally sharded array from a host array every process holds in full."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def run_items(block_fn, prng, key_data, items, shared, *, items_per_chunk):
    """Evaluate ``block_fn(key_i, shared[point_i] | {"first": first_i})`` for every
    work item, sharded and chunked.

    ``key_data`` is ``(I, ...)`` raw key data, ``items`` ``{"point": (I,) int32,
    "first": (I,) uint32}``, ``shared`` a pytree of ``(P, ...)`` host arrays (one
    row per point, replicated on every device).  Yields ``(stop, outputs)`` per
    chunk, where ``outputs`` is the pytree of numpy results of items
    ``[stop - len, stop)``, in order.
    """
    mesh = _mesh(prng)
    program, sharding = _compiled(block_fn, prng, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    shared = jax.tree.map(lambda a: _global(np.asarray(a), replicated), shared)
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
            (key_data, items),
        )
        out = multihost_utils.process_allgather(program(*args, shared), tiled=True)
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
# Grid points: what to sample (a block function) and what to compare it with
# --------------------------------------------------------------------------------------
_WIN_KEY = 0x5EED  # the independent base draw a policy's sample is compared with


class _Prepared(NamedTuple):
    point: Point
    block_fn: _Block
    params: dict  # host arrays for one point
    rows: Callable  # draws {"name": (replicates,)} -> list of result rows
    win: bool  # compared with base draws (the law level draws them for every point)
    bucket: tuple = ()  # points of one program run apart unless their buckets agree


@dataclasses.dataclass(frozen=True)
class _Block:
    """What one work item samples: ``BLOCK`` replicates of a point, from sample index
    ``first``.  Hashable by value, so equal shapes share one compiled program.

    ``level``: ``"law"`` (draws from an exact law, ``F^{-N}(U)``, from the
    point's inverse-CDF table, and always the base draws beside; one program for
    every law-level point whatever its length, ``N`` or support), ``"token"`` (the
    policy's own token sampler; ``policy`` holds its static fields, the traced ones
    arrive in ``params["traced"]``) or ``"reweight"`` (rejection from the base with
    the policy's exact weights, ``chunk`` proposals per step).
    """

    level: str
    length: int | None  # static at the token level
    policy: policies.Policy | None = None
    chunk: int = 1
    counts: bool = False  # draw token counts, not tokens (sampling = "counts")
    win: bool = False

    def __call__(self, key, params):
        first = params["first"]
        win_key = jax.random.fold_in(key, _WIN_KEY)
        if self.level == "law":
            # The policy's draws and the base draws it is compared with, as one
            # vectorised pair: one program for every law-level point (a policy
            # compared with nothing draws, cheaply, from its own law twice).
            keys = jax.random.wrap_key_data(jnp.stack(
                [jax.random.key_data(key), jax.random.key_data(win_key)]),
                impl=jax.random.key_impl(key))
            r, base = jax.vmap(_law_draw, in_axes=(0, 0, 0, 0, None))(
                keys,
                jnp.stack([params["values"], params["base_values"]]),
                jnp.stack([params["log_neg"], params["base_log_neg"]]),
                jnp.stack([params["log_num"], jnp.zeros_like(params["log_num"])]),
                first)
        else:
            # The point's model and reward travel as pytrees (a MemorylessLM, a
            # MarkovLM; a LinearReward, a PairReward): one route for every family.
            lm, reward = params["lm"], params["reward"]
            if self.counts:
                lm = sample._counts_view(lm)
            if self.level == "token":
                policy = self.policy.unchecked_replace(**params["traced"])
                r = policy.sample_tokens(key, lm, reward, BLOCK, first_index=first)
            else:
                r = sample.reweighted(key, lm, reward, params["values"],
                                      params["log_weight"], BLOCK,
                                      proposals_per_step=self.chunk, first_index=first)
            base = sample.rewards(win_key, lm, reward, BLOCK,
                                  first_index=first) if self.win else None
        out = {"reward": r / params["length"]}
        if base is not None:
            out["base"] = base / params["length"]
        return out


def _law_draw(key, values, log_neg, log_num, first):
    # The draws of sample.best_of_n_from_law(key, values, log_pmf, None, BLOCK,
    # log_num_candidates=log_num, first_index=first), from the point's table
    # (made once per point by _law_tables), one vectorised step: no scan.
    stage = sample._gen_stage(sample._LawGen(values, log_neg), log_num)
    raw = classic_threefry(sample._draw_block(stage, key, BLOCK))(first)
    return jax.vmap(stage.consume)(raw)


@functools.lru_cache(maxsize=64)
def _model(spec, length: int, x64: bool):
    """``(lm, reward)`` of a model at a length (in the precision ``x64`` it is
    built in), built once for all the points that share them."""
    return spec.build(length)


@functools.lru_cache(maxsize=64)
def _base_law(spec, length: int, x64: bool):
    """The model's exact law of ``R``, or the ``ValueError`` saying why there is
    none; computed once for all the points that share it."""
    lm, reward = _model(spec, length, x64)
    try:
        return lm.reward_law(reward)
    except ValueError as e:
        return e


def _prepare(config: SweepConfig, spec, point: Point) -> _Prepared:
    x64 = bool(jax.config.jax_enable_x64)
    lm, reward = _model(spec, point.length, x64)
    dtype = jnp.result_type(*jax.tree.leaves(lm))
    n = point.length
    settings = dict(point.settings)
    counts = config.sampling == "counts"
    try:
        sampled = sample._counts_view(lm) if counts else lm  # refused before any law
        policy = point.policy.from_settings(settings, lm, reward)
    except ValueError as e:
        raise ValueError(f"point {point.tag}: {e}") from None
    law_level = config.sampling == "law"
    bucket = ()
    needs_law = law_level or not policy.has_token_sampler
    base_law = _base_law(spec, point.length, x64)  # after the refusals above
    if isinstance(base_law, ValueError):
        if needs_law:
            raise ValueError(f"point {point.tag}: {base_law}") from None
        base_law = None
    policy_law = None
    if base_law is not None:
        try:
            policy_law = exact.policy_law_from_law(base_law, policy)
        except ValueError as e:
            if needs_law:
                raise ValueError(f"point {point.tag}: {e}") from None
    win = type(policy).compare_with_base
    params = {"length": np.asarray(n, dtype)}
    if law_level:
        values, log_pmf, log_num = policy.law_sampling(
            lm, reward, np.asarray(base_law.values), np.asarray(base_law.log_pmf))
        params.update(values=np.asarray(values, dtype),
                      log_pmf=np.asarray(log_pmf, dtype),
                      log_num=np.asarray(log_num, dtype))
        base_values, base_log_pmf = ((base_law.values, base_law.log_pmf) if win
                                     else (values, log_pmf))
        params.update(base_values=np.asarray(base_values, dtype),
                      base_log_pmf=np.asarray(base_log_pmf, dtype))
        block_fn = _Block("law", None)  # always draws "base"; used when win
    else:
        params["lm"] = jax.tree.map(np.asarray, lm)  # unflattened unchecked
        params["reward"] = jax.tree.map(np.asarray, reward)
        if policy.has_token_sampler:
            try:
                policy.check_token_sampling()
            except ValueError as e:
                raise ValueError(f"point {point.tag}: {e}") from None
            traced = {f: getattr(policy, f) for f in type(policy).traced_fields}
            params["traced"] = {
                k: np.asarray(v, np.uint32 if isinstance(v, int) else dtype)
                for k, v in traced.items()}
            # Points whose traced integers (N) are within a factor 2 run together:
            # a traced N is a while_loop, as long as the largest N of its batch.
            bucket = tuple(v.bit_length() for v in traced.values()
                           if isinstance(v, int))
            static = policy.unchecked_replace(**dict.fromkeys(traced))
            block_fn = _Block("token", n, static, win=win, counts=counts)
        else:
            try:
                plan = sample._reweighting(policy_law, config.replicates,
                                           sample._cost_length(sampled))
            except ValueError as e:
                raise ValueError(f"point {point.tag}: {e}") from None
            params.update(values=np.asarray(plan.values, dtype),
                          log_weight=np.asarray(plan.log_accept, dtype))
            block_fn = _Block("reweight", n, None, plan.proposals_per_step, win=win,
                              counts=counts)
    rows = functools.partial(_rows, point=point, lm=lm, reward=reward, policy=policy,
                             law=policy_law)
    return _Prepared(point, block_fn, params, rows, win, bucket)


def _row(quantity, estimate=None, exact_value=None, asymptotic=None):
    row = {
        "quantity": quantity,
        "exact": _float(exact_value),
        "asymptotic": _float(asymptotic),
    }
    if estimate is not None:
        row["mc_mean"] = float(estimate.value)
        row["mc_stderr"] = float(estimate.stderr)
        row["mc_count"] = int(estimate.num_samples)
    return row


def _float(x):
    return None if x is None else float(x)


def _rows(draws, *, point: Point, lm, reward, policy, law):
    """The tidy rows of one point: Monte Carlo (:mod:`jaxalign.estimators`) beside
    the exact values of the policy's law and the policy's closed forms and limits."""
    n = point.length
    with jax.enable_x64(True):
        r = np.asarray(draws["reward"], np.float64)
        known = {}
        if law is not None:
            known = {
                "reward_per_token": (float(law.expected_reward) / n, None),
                "variance_per_token": (float(law.variance) / n, None),
                "kl_per_token": (float(law.kl) / n, None),
                "win_rate": (float(law.win_rate), None),
            }
        for quantity, (ex, asym) in policy.sweep_values(
            lm, reward, dict(point.settings), law
        ).items():
            old = known.get(quantity, (None, None))
            known[quantity] = (old[0] if ex is None else ex,
                               old[1] if asym is None else asym)
        mc = {
            "reward_per_token": estimators.mean(r),
            "variance_per_token": _variance(r, n),
        }
        if "base" in draws:
            mc["win_rate"] = estimators.win_rate(r, np.asarray(draws["base"],
                                                               np.float64))
        if law is not None:
            values = np.asarray(law.values, np.float64)
            cls = np.searchsorted(0.5 * (values[1:] + values[:-1]), r * n)
            # E_pi[log g(R)] = KL(pi || P): an unbiased Monte Carlo KL.
            log_g = law.log_weight()[cls]
            # (A constant log g -- the base policy, rejection -- needs no estimate:
            # its spread is rounding.)
            spread = np.ptp(log_g) if np.all(np.isfinite(log_g)) else 0.0
            if spread > 1e-9 * max(1.0, float(np.max(np.abs(log_g)))):
                mc["kl_per_token"] = estimators.mean(log_g / n)
        order = ["reward_per_token", "variance_per_token", "win_rate", "kl_per_token"]
        order += [q for q in known if q not in order]
        rows = []
        for quantity in order:
            if quantity not in known and quantity not in mc:
                continue
            ex, asym = known.get(quantity, (None, None))
            rows.append(_row(quantity, mc.get(quantity), ex, asym))
    return rows


def _variance(r: np.ndarray, n: int):
    """Var(R)/n by the unbiased k-statistic of the sequence rewards R = n r."""
    est = estimators.scaled_cumulants(r * n, n, order=2)
    return estimators.Estimate(est.value[1], est.stderr[1], est.num_samples)


def _prepare_all(config: SweepConfig) -> list[_Prepared]:
    """Every grid point prepared (and so validated) before anything runs.

    Laws are padded to one support size (a power of two, zero-probability points
    above the top), so a whole law-level sweep needs two programs.
    """
    specs = {s.name: s for s in config.models}
    prepared = [_prepare(config, specs[p.model], p) for p in grid_points(config)]
    sizes = [len(p.params["values"]) for p in prepared if "values" in p.params]
    if sizes:
        size = 1 << (max(sizes) - 1).bit_length()
        prepared = [_pad_law(p, size) if "values" in p.params else p for p in prepared]
    return _law_tables(prepared)


_TABLES = (("values", "log_pmf", "log_neg"),
           ("base_values", "base_log_pmf", "base_log_neg"))


def _law_tables(prepared: list[_Prepared]) -> list[_Prepared]:
    """Replace each law-level point's ``log_pmf`` by its inverse-CDF table
    ``log(-log F)`` (``sample._law_table``, NumPy), made once per point before
    sampling instead of once per block of draws inside the sampling program."""
    out = []
    for p in prepared:
        params = dict(p.params)
        if p.block_fn.level == "law":
            for values_key, pmf_key, table_key in _TABLES:
                if pmf_key in params:
                    table = sample._law_table(params[values_key], params.pop(pmf_key))
                    params[table_key] = table.log_neg_log_cdf
        out.append(p._replace(params=params))
    return out


def _groups(prepared: list[_Prepared]) -> list[list[_Prepared]]:
    """Prepared points grouped by compiled shape, in grid order within a group."""
    groups: dict = {}
    for p in prepared:
        shapes = tuple(
            (jax.tree_util.keystr(path), np.shape(v), np.asarray(v).dtype.str)
            for path, v in jax.tree_util.tree_leaves_with_path(p.params)
        )
        # The tree structure too: a model's family and static length.
        groups.setdefault((p.block_fn, p.bucket, jax.tree.structure(p.params), shapes),
                          []).append(p)
    return list(groups.values())


_LAW_PAIRS = (("values", "log_pmf"), ("base_values", "base_log_pmf"),
              ("values", "log_weight"))


def _pad_law(prepared: _Prepared, size: int) -> _Prepared:
    params = dict(prepared.params)
    for values_key, log_key in _LAW_PAIRS:
        if values_key not in prepared.params or log_key not in prepared.params:
            continue
        values, log_pmf = prepared.params[values_key], prepared.params[log_key]
        extra = size - len(values)
        step = values[-1] - values[-2] if len(values) > 1 else 1.0
        pad_values = values[-1] + step * np.arange(1, extra + 1, dtype=values.dtype)
        params[values_key] = np.concatenate([values, pad_values])
        params[log_key] = np.concatenate(
            [log_pmf, np.full(extra, -np.inf, log_pmf.dtype)])
    return prepared._replace(params=params)


# --------------------------------------------------------------------------------------
# The sweep loop
# --------------------------------------------------------------------------------------
def _point_fields(point: Point, sampling: str) -> dict:
    return {"point": point.tag, "model": point.model, "length": point.length,
            "method": point.method, "sampling": sampling, **dict(point.settings)}


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
        bar = _progress(len(prepared), len(prepared) - len(todo),
                        enabled=progress and is_writer)
        t0 = time.perf_counter()
        num_samples = drawn = 0
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
                items = {
                    "point": np.repeat(np.arange(len(group), dtype=np.int32),
                                       num_blocks),
                    "first": np.tile(firsts, len(group)),
                }
                shared = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                      *[g.params for g in group])
                pending: list = []
                flushed = 0
                for stop, chunk_out in run_items(
                    block_fn,
                    config.prng,
                    key_data,
                    items,
                    shared,
                    items_per_chunk=items_per_chunk,
                ):
                    pending.append(chunk_out)
                    drawn += len(chunk_out["reward"]) * BLOCK
                    rate = drawn / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{rate:.3g} samples/s", refresh=False)
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
                        if not g.win:
                            draws.pop("base", None)
                        rows = [
                            dict(_point_fields(g.point, config.sampling), **row)
                            for row in g.rows(draws)
                        ]
                        if store is not None:
                            store.append(rows, g.point.tag)
                        num_samples += config.replicates
                        flushed += 1
                        bar.update(1)
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
