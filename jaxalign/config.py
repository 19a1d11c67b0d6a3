"""Sweep specifications: parse and validate TOML into an immutable `SweepConfig`.

A sweep is a grid of points (model × length × method × strength) with Monte Carlo
replicates at each.  Example (the embedded default, ``jaxalign list`` shows more)::

    seed = 0
    replicates = 4096
    methods = ["tilted", "best_of_n"]
    sampling = "law"

    [[model]]
    name = "bernoulli-0.3"
    bernoulli = 0.3
    rewards = [0.0, 1.0]

    [grid]
    length = [10, 20, 40, 80]
    delta = [0.1]

Every error names the offending key, its value and what is allowed, and is raised as
:class:`ConfigError` (a ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import zlib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from jaxalign import policies

__all__ = [
    "ConfigError",
    "ModelSpec",
    "SweepConfig",
    "Point",
    "load_config",
    "parse_config",
    "example_configs",
    "grid_points",
]

SAMPLING = ("token", "law", "counts")
#: Replicates per point: its draws (float64, a few arrays) stay in memory until the
#: point is written, about 2 GiB at this bound.
MAX_REPLICATES = 2**26
#: Sequence lengths: an int32 (``x64 = false`` runs in 32 bits).
MAX_LENGTH = 2**31 - 1
PRNG_IMPLS = ("threefry2x32", "philox4x32", "rbg", "unsafe_rbg")
MODEL_KINDS = ("probs", "logits", "bernoulli", "uniform", "zipf", "dirichlet")
_TOP_KEYS = {
    "name",
    "seed",
    "prng",
    "replicates",
    "chunk_size",
    "methods",
    "sampling",
    "x64",
    "out",
    "model",
    "grid",
}


class ConfigError(ValueError):
    """A sweep specification is invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One base model and its reward, as written in the config."""

    name: str
    kind: str  # one of MODEL_KINDS
    params: tuple  # kind-specific: probs/logits vector, q, K, (K, s), (K, alpha, seed)
    rewards: tuple[float, ...]

    def build(self, length: int):
        """The ``(MemorylessLM, LinearReward)`` pair at sequence length ``length``."""
        import jax

        from jaxalign.models import LinearReward, MemorylessLM

        if self.kind == "probs":
            lm = MemorylessLM.from_probs(list(self.params), length=length)
        elif self.kind == "logits":
            lm = MemorylessLM.from_logits(list(self.params), length=length)
        elif self.kind == "bernoulli":
            lm = MemorylessLM.bernoulli(self.params[0], length=length)
        elif self.kind == "uniform":
            lm = MemorylessLM.uniform(self.params[0], length=length)
        elif self.kind == "zipf":
            lm = MemorylessLM.zipf(self.params[0], self.params[1], length=length)
        else:
            num_tokens, concentration, seed = self.params
            key = jax.random.key(seed)
            lm = MemorylessLM.dirichlet(key, num_tokens, concentration, length=length)
        return lm, LinearReward(list(self.rewards))


@dataclasses.dataclass(frozen=True)
class Point:
    """One grid point: everything that defines a Monte Carlo cell, hashable.

    ``settings`` holds the policy's settings (``results.csv`` columns such as
    ``lam`` or ``num_candidates``) in the order of
    :func:`jaxalign.policies.setting_names`; each is also readable as an attribute
    (``point.num_candidates``, ``None`` when the point has no such setting).
    """

    index: int  # position in the grid (display order only)
    model: str
    length: int
    method: str
    settings: tuple[tuple[str, Any], ...] = ()

    def __getattr__(self, name: str):
        if name.startswith("__") or name not in policies.setting_names():
            raise AttributeError(name)
        return dict(self.settings).get(name)

    @property
    def policy(self) -> type[policies.Policy]:
        """The registered policy class of this point's method."""
        return policies.get(self.method)

    @property
    def tag(self) -> str:
        """A canonical description of the point, independent of the grid it sits in."""
        fields = [("model", self.model), ("length", self.length),
                  ("method", self.method), *self.settings]
        return ";".join(f"{k}={v!r}" for k, v in fields if v is not None)

    @property
    def key_data(self) -> int:
        """The 32-bit tag folded into the sweep key, so a point's random numbers do not
        depend on which other points the grid holds or on the order they run in."""
        return zlib.crc32(self.tag.encode())


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A validated sweep specification."""

    name: str
    seed: int
    prng: str
    replicates: int
    chunk_size: int
    methods: tuple[str, ...]
    sampling: str
    x64: bool
    out: str | None
    models: tuple[ModelSpec, ...]
    grid: Mapping[str, tuple]

    def to_dict(self) -> dict:
        """A JSON-serialisable form (stored in the run directory)."""
        d = dataclasses.asdict(self)
        d["grid"] = {k: list(v) for k, v in self.grid.items()}
        return d


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key {key!r}: got {value!r}; allowed: {allowed}")


def _int(data, key, default=None, minimum=1, maximum=None, why=""):
    value = data.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        allowed = (f"an integer >= {minimum}" if maximum is None else
                   f"an integer in [{minimum}, {maximum}]{f' ({why})' if why else ''}")
        raise _fail(key, value, allowed)
    return value


def _list(data: Mapping, key: str, kind, check, allowed: str) -> tuple:
    value = data[key]
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise _fail(key, value, f"a non-empty list of {allowed}")
    for v in value:
        ok = isinstance(v, kind) and not isinstance(v, bool) and check(v)
        if not ok:
            raise _fail(key, v, allowed)
    return tuple(value)


def _is_finite(v) -> bool:
    return math.isfinite(v)


def _floats(value, key) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise _fail(key, value, "a list of at least 2 numbers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _is_finite(v):
            raise _fail(key, v, "finite numbers")
    return tuple(float(v) for v in value)


def _parse_model(i: int, m: Any) -> ModelSpec:
    where = f"model[{i}]"
    if not isinstance(m, dict):
        raise _fail(where, m, "a table with a model kind and rewards")
    known = {"name", "rewards", "exponent", "concentration", "seed"}
    unknown = set(m) - known - set(MODEL_KINDS)
    if unknown:
        raise _fail(
            f"{where}.{sorted(unknown)[0]}",
            m[sorted(unknown)[0]],
            f"one of {sorted(known | set(MODEL_KINDS))}",
        )
    kinds = [k for k in MODEL_KINDS if k in m]
    if len(kinds) != 1:
        raise _fail(where, sorted(m), f"exactly one model kind of {list(MODEL_KINDS)}")
    kind = kinds[0]
    if "rewards" not in m:
        raise _fail(f"{where}.rewards", None, "a list of per-token rewards")
    rewards = _floats(m["rewards"], f"{where}.rewards")
    value = m[kind]
    if kind in ("probs", "logits"):
        params = _floats(value, f"{where}.{kind}")
        num_tokens = len(params)
    elif kind == "bernoulli":
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (0 <= value <= 1)
        ):
            raise _fail(f"{where}.bernoulli", value, "a probability q in [0, 1]")
        params, num_tokens = (float(value),), 2
    else:
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise _fail(
                f"{where}.{kind}", value, "the number of tokens K, an integer >= 2"
            )
        num_tokens = value
        if kind == "uniform":
            params = (value,)
        elif kind == "zipf":
            exponent = m.get("exponent", 1.0)
            if not isinstance(exponent, (int, float)) or not 0 <= exponent < math.inf:
                raise _fail(f"{where}.exponent", exponent, "a finite number >= 0")
            params = (value, float(exponent))
        else:
            conc = m.get("concentration", 1.0)
            if not isinstance(conc, (int, float)) or not 0 < conc < math.inf:
                raise _fail(f"{where}.concentration", conc, "a finite number > 0")
            params = (value, float(conc), _int(m, "seed", 0, minimum=0))
    if len(rewards) != num_tokens:
        raise _fail(
            f"{where}.rewards",
            list(rewards),
            f"{num_tokens} rewards, one per token of the model",
        )
    name = m.get("name", f"model{i}")
    if not isinstance(name, str) or not name:
        raise _fail(f"{where}.name", name, "a non-empty string")
    spec = ModelSpec(name=name, kind=kind, params=params, rewards=rewards)
    try:
        spec.build(1)
    except ValueError as e:
        raise ConfigError(f"config key {where!r}: {e}") from None
    return spec


def parse_config(data: Mapping[str, Any]) -> SweepConfig:
    """Validate a parsed TOML mapping into a :class:`SweepConfig`."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(key, data[key], f"one of {sorted(_TOP_KEYS)}")
    name = data.get("name", "sweep")
    if not isinstance(name, str):
        raise _fail("name", name, "a string")
    seed = _int(data, "seed", 0, minimum=0)
    prng = data.get("prng", "threefry2x32")
    if prng not in PRNG_IMPLS:
        raise _fail("prng", prng, f"one of {list(PRNG_IMPLS)}")
    replicates = _int(data, "replicates", 1024, maximum=MAX_REPLICATES,
                      why="a point's draws are held in memory")
    chunk_size = _int(data, "chunk_size", 4096)
    methods = _list(
        {"methods": data.get("methods", ["best_of_n"])},
        "methods",
        str,
        lambda v: v in policies.names(),
        f"one of {list(policies.names())}",
    )
    sampling = data.get("sampling", "law")
    if sampling not in SAMPLING:
        raise _fail("sampling", sampling, f"one of {list(SAMPLING)}")
    x64 = data.get("x64", True)
    if not isinstance(x64, bool):
        raise _fail("x64", x64, "true or false")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise _fail("out", out, "a directory path string")
    models = data.get("model")
    if not isinstance(models, list) or not models:
        raise _fail("model", models, "one or more [[model]] tables")
    specs = tuple(_parse_model(i, m) for i, m in enumerate(models))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _fail("model.name", names, "distinct names")
    grid_in = data.get("grid")
    if not isinstance(grid_in, dict):
        raise _fail("grid", grid_in, "a [grid] table")
    grid_keys = {"length": policies.GridKey("length", int,
                                           lambda v: 1 <= v <= MAX_LENGTH,
                                           f"integers in [1, {MAX_LENGTH}]")}
    for name in policies.names():
        for key in policies.get(name).grid_keys():
            grid_keys.setdefault(key.name, key)
    unknown = set(grid_in) - set(grid_keys)
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(f"grid.{key}", grid_in[key], f"one of {sorted(grid_keys)}")
    if "length" not in grid_in:
        raise _fail("grid.length", None, "a non-empty list of sequence lengths >= 1")
    grid: dict[str, tuple] = {}
    for name, key in grid_keys.items():
        if name in grid_in:
            kinds = (int,) if key.kind is int else (int, float)
            grid[name] = tuple(
                key.kind(v) for v in _list(grid_in, name, kinds, key.check, key.allowed)
            )
    for method in methods:
        cls = policies.get(method)
        strength = [k.name for k in cls.strength_keys]
        if strength and not any(k in grid for k in strength):
            raise _fail(
                "grid", sorted(grid), f"method {method!r} needs one of {strength}"
            )
        for key in cls.required_keys:
            if key.name not in grid:
                raise _fail(f"grid.{key.name}", None,
                            f"{key.allowed} for method {method!r}")
    config = SweepConfig(
        name=name,
        seed=seed,
        prng=prng,
        replicates=replicates,
        chunk_size=chunk_size,
        methods=methods,
        sampling=sampling,
        x64=x64,
        out=out,
        models=specs,
        grid=grid,
    )
    if sampling != "law":
        _check_token_work(config)
    return config


def _check_token_work(config: SweepConfig) -> None:
    """Refuse token- or count-level points above the samplers' work budget up front
    (each draws ``replicates x N`` sequences; ``jaxalign.sample.token_budget`` opts
    in)."""
    from jaxalign.sample._counts import _TOKENS_PER_BINOMIAL
    from jaxalign.sample._selection import _check_work

    specs = {spec.name: spec for spec in config.models}
    for point in grid_points(config):
        num_candidates = dict(point.settings).get("num_candidates") or 1
        cost = point.length
        if config.sampling == "counts":  # K - 1 binomials per sequence
            cost = max(1, len(specs[point.model].rewards) - 1) * _TOKENS_PER_BINOMIAL
        try:
            _check_work(config.replicates * num_candidates, cost,
                        f"point {point.tag}", 'use sampling = "law"')
        except ValueError as e:
            raise ConfigError(f"config key 'sampling': {e}") from None


def load_config(path) -> SweepConfig:
    """Read and validate a TOML sweep file (``str`` or path-like)."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(
            f"cannot read config file {str(path)!r}: {e.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    return parse_config(data)


def example_configs() -> dict[str, str]:
    """The embedded example configs, ``{name: TOML text}``."""
    folder = resources.files("jaxalign") / "configs"
    return {
        p.name.removesuffix(".toml"): p.read_text()
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".toml")
    }


def _ordered(settings: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    order = policies.setting_names()
    return tuple((k, settings[k]) for k in sorted(settings, key=order.index))


def grid_points(config: SweepConfig) -> list[Point]:
    """All grid points in a fixed order; ``Point.index`` is stable for a config."""
    points = []
    for spec in config.models:
        for length in config.grid["length"]:
            for method in config.methods:
                for settings in policies.get(method).expand(config.grid, length):
                    points.append(
                        Point(
                            index=len(points),
                            model=spec.name,
                            length=length,
                            method=method,
                            settings=_ordered(settings),
                        )
                    )
    return points
