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
MODEL_KINDS = ("probs", "logits", "bernoulli", "uniform", "zipf", "dirichlet", "markov")
#: The forms of a ``markov = {...}`` table: its keys, the first one naming the form.
MARKOV_FORMS = {
    "sticky": ("sticky", "probs"),
    "init": ("init", "trans"),
    "init_logits": ("init_logits", "trans_logits"),
    "dirichlet": ("dirichlet", "concentration", "seed"),
}
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
    """One base model and its reward, as written in the config.

    ``kind == "markov"`` is a :class:`jaxalign.MarkovLM`, with ``params`` one of
    ``("sticky", s, probs)``, ``("init", init, trans)``,
    ``("init_logits", init_logits, trans_logits)`` or
    ``("dirichlet", K, concentration, seed)``; ``trans``/``trans_logits`` is one
    ``K x K`` matrix or, for a time-inhomogeneous chain, ``n - 1`` of them (one per
    step ``t -> t + 1``), and then the chain exists at that one length ``n``
    (:attr:`length`); its reward is the per-token
    ``rewards`` or, when ``pair_rewards`` (``K x K``) is given, the
    :class:`jaxalign.PairReward` ``(pair_rewards, first_rewards)`` (first-token
    rewards zero when not given, as ``PairReward``'s own default).
    """

    name: str
    kind: str  # one of MODEL_KINDS
    params: tuple  # kind-specific: probs/logits vector, q, K, (K, s), (K, alpha, seed)
    rewards: tuple[float, ...]
    pair_rewards: tuple[tuple[float, ...], ...] = ()
    first_rewards: tuple[float, ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelSpec:
        """The spec of :meth:`SweepConfig.to_dict`'s ``models`` entries (lists back
        to tuples)."""

        def tup(x):
            return tuple(tup(v) for v in x) if isinstance(x, (list, tuple)) else x

        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tup(v) for k, v in d.items() if k in fields})

    @property
    def num_tokens(self) -> int:
        """K, the vocabulary size of the model."""
        return len(self.rewards) or len(self.pair_rewards)

    @property
    def length(self) -> int | None:
        """The one sequence length of a time-inhomogeneous chain (``n - 1``
        transition matrices), else ``None`` (the model exists at every length)."""
        if self.kind == "markov" and self.params[0] in ("init", "init_logits"):
            trans = self.params[2]
            if isinstance(trans[0][0], tuple):  # (n - 1, K, K)
                return len(trans) + 1
        return None

    def build(self, length: int):
        """The ``(model, reward)`` pair at sequence length ``length``: a
        ``(MemorylessLM, LinearReward)``, or a :class:`jaxalign.MarkovLM` with a
        ``LinearReward`` or a ``PairReward`` (kind ``"markov"``)."""
        import jax

        from jaxalign.markov import MarkovLM
        from jaxalign.models import LinearReward, MemorylessLM, PairReward

        if self.pair_rewards:
            reward = PairReward([list(row) for row in self.pair_rewards],
                                list(self.first_rewards) or None)
        else:
            reward = LinearReward(list(self.rewards))
        if self.kind == "markov":
            form = self.params[0]
            if form == "sticky":
                lm = MarkovLM.sticky(list(self.params[2]), self.params[1],
                                     length=length)
            elif form in ("init", "init_logits"):
                make = (MarkovLM.from_probs if form == "init"
                        else MarkovLM.from_logits)
                lm = make(list(self.params[1]), _lists(self.params[2]), length=length)
            else:
                _, num_tokens, concentration, seed = self.params
                lm = MarkovLM.dirichlet(jax.random.key(seed), num_tokens,
                                        concentration, length=length)
        elif self.kind == "probs":
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
        return lm, reward


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


def _floats(value, key, logits: bool = False) -> tuple[float, ...]:
    """A list of at least 2 finite numbers; logits may also be ``-inf`` (zero mass,
    TOML's ``-inf``), with at least one finite entry."""
    if not isinstance(value, list) or len(value) < 2:
        raise _fail(key, value, "a list of at least 2 numbers")
    allowed = "finite numbers or -inf" if logits else "finite numbers"
    for v in value:
        if (isinstance(v, bool) or not isinstance(v, (int, float))
                or not (_is_finite(v) or (logits and v == -math.inf))):
            raise _fail(key, v, allowed)
    if not any(_is_finite(v) for v in value):
        raise _fail(key, value, f"{allowed}, at least one of them finite")
    return tuple(float(v) for v in value)


def _matrix(value, key, logits: bool = False) -> tuple[tuple[float, ...], ...]:
    """A square matrix of finite numbers (logits: or ``-inf``, see :func:`_floats`),
    at least 2 x 2, as nested tuples."""
    if (not isinstance(value, list) or len(value) < 2
            or not all(isinstance(row, list) for row in value)):
        raise _fail(key, value, "a K x K matrix (a list of K lists of K numbers), "
                    "K >= 2")
    rows = tuple(_floats(row, f"{key}[{j}]", logits) for j, row in enumerate(value))
    for j, row in enumerate(rows):
        if len(row) != len(rows):
            raise _fail(f"{key}[{j}]", list(row),
                        f"{len(rows)} numbers (a square K x K matrix, K = {len(rows)})")
    return rows


def _lists(x):
    """Nested tuples back to nested lists (for the model constructors)."""
    return [_lists(v) for v in x] if isinstance(x, (list, tuple)) else x


def _depth(value) -> int:
    """Nesting depth of a list along its first entries (0 for a scalar)."""
    depth = 0
    while isinstance(value, list) and value:
        depth, value = depth + 1, value[0]
    return depth


def _transitions(value, key, k: int, init_key: str, logits: bool = False) -> tuple:
    """A chain's transitions: one ``K x K`` matrix, or a list of ``n - 1 >= 1`` of
    them (time-inhomogeneous: the matrix of step ``t -> t + 1``), as nested
    tuples; ``K`` from the initial law ``init_key``."""
    allowed = (f"a K x K matrix with K = {k} from {init_key}, or a list of n - 1 "
               "such matrices, one per step t -> t + 1 (time-inhomogeneous)")
    depth = _depth(value)
    if depth not in (2, 3):
        raise _fail(key, value, allowed)
    mats = [value] if depth == 2 else value
    names = [key] if depth == 2 else [f"{key}[{t}]" for t in range(len(value))]
    out = []
    for name, mat in zip(names, mats, strict=True):
        if _depth(mat) != 2:
            raise _fail(name, mat, allowed)
        out.append(_matrix(mat, name, logits))
        if len(out[-1]) != k:
            raise _fail(name, mat, allowed)
    return out[0] if depth == 2 else tuple(out)


def _num_tokens(value, key) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise _fail(key, value, "the number of tokens K, an integer >= 2")
    return value


def _concentration(table, key) -> float:
    conc = table.get("concentration", 1.0)
    if (isinstance(conc, bool) or not isinstance(conc, (int, float))
            or not 0 < conc < math.inf):
        raise _fail(key, conc, "a finite number > 0")
    return float(conc)


def _parse_markov(value, where: str) -> tuple[tuple, int]:
    """``(params, K)`` of a ``markov = {...}`` table (shapes and types; the chain's
    own constructors check the probabilities when the spec is built)."""
    where = f"{where}.markov"
    forms = " or ".join("{" + ", ".join(keys) + "}" for keys in MARKOV_FORMS.values())
    if not isinstance(value, dict):
        raise _fail(where, value, f"a table {forms}")
    named = [form for form in MARKOV_FORMS if form in value]
    if len(named) != 1:
        raise _fail(where, sorted(value), f"exactly one of the forms {forms}")
    form = named[0]
    extra = sorted(set(value) - set(MARKOV_FORMS[form]))
    if extra:
        raise _fail(f"{where}.{extra[0]}", value[extra[0]],
                    f"the keys of the {form!r} form, {list(MARKOV_FORMS[form])}")
    missing = [k for k in MARKOV_FORMS[form][:2] if k not in value
               and form != "dirichlet"]  # dirichlet's other keys have defaults
    if missing:
        raise _fail(f"{where}.{missing[0]}", None,
                    f"the {form!r} form needs {list(MARKOV_FORMS[form])}")
    if form == "sticky":
        s = value["sticky"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise _fail(f"{where}.sticky", s, "a stay probability s in [0, 1]")
        probs = _floats(value["probs"], f"{where}.probs")
        return ("sticky", float(s), probs), len(probs)
    if form in ("init", "init_logits"):
        first, steps = MARKOV_FORMS[form]
        logits = form == "init_logits"
        init = _floats(value[first], f"{where}.{first}", logits)
        trans = _transitions(value[steps], f"{where}.{steps}", len(init), first, logits)
        return (form, init, trans), len(init)
    num_tokens = _num_tokens(value["dirichlet"], f"{where}.dirichlet")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(f"{where}.seed", seed, "an integer >= 0")
    return ("dirichlet", num_tokens, _concentration(value, f"{where}.concentration"),
            seed), num_tokens


def _parse_model(i: int, m: Any, x64: bool = True) -> ModelSpec:
    where = f"model[{i}]"
    if not isinstance(m, dict):
        raise _fail(where, m, "a table with a model kind and rewards")
    known = {"name", "rewards", "pair_rewards", "first_rewards", "exponent",
             "concentration", "seed"}
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
    value = m[kind]
    if kind == "markov":
        for key in ("exponent", "concentration", "seed"):
            if key in m:
                raise _fail(f"{where}.{key}", m[key],
                            "inside the markov table (markov = { dirichlet = K, "
                            "concentration = ..., seed = ... })")
    elif "pair_rewards" in m:
        raise _fail(f"{where}.pair_rewards", m["pair_rewards"],
                    "only with markov = {...} (pair rewards need a chain); "
                    "use rewards = [...]")
    if "first_rewards" in m and "pair_rewards" not in m:
        raise _fail(f"{where}.first_rewards", m["first_rewards"],
                    "only with pair_rewards (a per-token reward is rewards = [...])")
    if ("rewards" in m) == ("pair_rewards" in m):
        raise _fail(f"{where}.rewards", m.get("rewards"),
                    "exactly one of rewards = [...] (per-token) and, for markov, "
                    "pair_rewards = [[...], ...] (K x K)")
    rewards: tuple = ()
    pair: tuple = ()
    first: tuple = ()
    if "rewards" in m:
        rewards = _floats(m["rewards"], f"{where}.rewards")
    else:
        pair = _matrix(m["pair_rewards"], f"{where}.pair_rewards")
        if "first_rewards" in m:
            first = _floats(m["first_rewards"], f"{where}.first_rewards")
    if kind == "markov":
        params, num_tokens = _parse_markov(value, where)
    elif kind in ("probs", "logits"):
        params = _floats(value, f"{where}.{kind}", logits=kind == "logits")
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
        num_tokens = _num_tokens(value, f"{where}.{kind}")
        if kind == "uniform":
            params = (value,)
        elif kind == "zipf":
            exponent = m.get("exponent", 1.0)
            if not isinstance(exponent, (int, float)) or not 0 <= exponent < math.inf:
                raise _fail(f"{where}.exponent", exponent, "a finite number >= 0")
            params = (value, float(exponent))
        else:
            params = (value, _concentration(m, f"{where}.concentration"),
                      _int(m, "seed", 0, minimum=0))
    for key, got in (("rewards", rewards), ("pair_rewards", pair),
                     ("first_rewards", first)):
        if got and len(got) != num_tokens:
            shape = "K x K" if key == "pair_rewards" else "K"
            raise _fail(f"{where}.{key}", m[key],
                        f"{shape} rewards with K = {num_tokens}, the model's tokens")
    name = m.get("name", f"model{i}")
    if not isinstance(name, str) or not name:
        raise _fail(f"{where}.name", name, "a non-empty string")
    spec = ModelSpec(name=name, kind=kind, params=params, rewards=rewards,
                     pair_rewards=pair, first_rewards=first)
    import jax

    try:
        with jax.enable_x64(x64):  # the constructors' checks, in the run's dtype
            spec.build(spec.length or (2 if kind == "markov" else 1))
    except ValueError as e:
        key = f"{where}.markov" if kind == "markov" else where
        raise ConfigError(f"config key {key!r}: {e}") from None
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
    specs = tuple(_parse_model(i, m, x64) for i, m in enumerate(models))
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
    for i, spec in enumerate(specs):
        if spec.length is not None and set(grid["length"]) != {spec.length}:
            steps = MARKOV_FORMS[spec.params[0]][1]
            raise _fail(f"model[{i}].markov.{steps}", f"{spec.length - 1} matrices",
                        f"one per step of every grid.length {list(grid['length'])}: "
                        f"a time-inhomogeneous chain has n - 1 matrices, so it needs "
                        f"grid.length = [{spec.length}]")
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
    _check_chains(config)
    if sampling != "law":
        _check_token_work(config)
    return config


def _check_chains(config: SweepConfig) -> None:
    """Refuse token counts for a Markov chain (a chain's reward is not a function of
    its counts)."""
    chains = [spec.name for spec in config.models if spec.kind == "markov"]
    if chains and config.sampling == "counts":
        raise _fail("sampling", config.sampling,
                    f'"token" or "law" for Markov model {chains[0]!r} (counts '
                    "sampling needs a memoryless model)")


def _check_token_work(config: SweepConfig) -> None:
    """Refuse token- or count-level points above the samplers' work budget up front
    (each draws ``replicates x N`` sequences; ``jaxalign.sample.token_budget`` opts
    in)."""
    from jaxalign.sample._counts import _sequence_cost
    from jaxalign.sample._selection import _check_work

    specs = {spec.name: spec for spec in config.models}
    for point in grid_points(config):
        num_candidates = dict(point.settings).get("num_candidates") or 1
        cost = point.length
        if config.sampling == "counts":  # K - 1 binomials per sequence
            cost = _sequence_cost(specs[point.model].num_tokens)
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
