"""Shared type aliases and argument checks (private)."""

from __future__ import annotations

import functools
import inspect
import math
import operator
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any
PRNGKey = jax.Array  # a typed key: jax.random.key(seed)


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values we can inspect in Python (not a tracer)."""
    return not isinstance(x, jax.core.Tracer)


def device_array(x: Any, dtype: Any = None) -> jax.Array:
    """``jnp.asarray(x, dtype)``, by a plain transfer for host data: in this JAX,
    ``jnp.asarray`` of a NumPy array runs a compiled copy (0.07-0.1 s in a new
    process, e.g. the CLI's), ``jax.device_put`` none."""
    if isinstance(x, jax.Array):  # (tracers too)
        return jnp.asarray(x, dtype)
    return jax.device_put(np.asarray(x, dtype))


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``), else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(need: float, what: str, advice: str) -> None:
    """Refuse, before any work, a computation whose estimated peak memory ``need``
    (bytes) exceeds :func:`available_memory`: ``ValueError`` naming ``what``, the
    estimate and ``advice``."""
    have = available_memory()
    if need > have:
        raise ValueError(
            f"{what}: estimated peak memory {need / 2**30:.3g} GiB, more than the "
            f"{have / 2**30:.3g} GiB available; {advice}")


def classic_threefry(fn):
    """Trace ``fn`` with ``jax_threefry_partitionable=False`` whatever the global flag.

    Our samplers give every sample (and candidate) its own key, so each random
    call draws one small block per key and the partitionable threefry layout
    buys nothing; the classic layout is 1.4-1.6x faster on CPU
    (``benchmarks/bench_sampling.py``).  Pinning it also makes the numbers
    independent of the user's setting of that flag (whose default changed in
    JAX 0.5).  Kernels get it through :func:`prng_jit`; eager draws call
    ``classic_threefry(jax.random.normal)(key, ...)``.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return fn(*args, **kwargs)

    return traced


# Compiler options for small programs whose compile time is all the user waits for
# (closed forms, root solvers, Perron rates over K tokens): no LLVM optimisation passes
# and XLA's older CPU fusion code generator.  `jaxalign theory`'s report compiled in
# 1.6-1.8 s with XLA's defaults and in 0.5 s with these; a chain's lam_for_kl_rate
# first call 4.0 s and 2.2 s at K = 16 (long runs are slower: see `light_when`).  2-core
# CPU, JAX 0.10.2.  The HLO passes are the same, so are the results.
_LIGHT_OPTIONS = {"xla_backend_optimization_level": 0,
                  "xla_llvm_disable_expensive_passes": True,
                  "xla_cpu_use_fusion_emitters": False}


@functools.cache
def _light_options() -> dict:
    """The light options this jaxlib knows (an unknown one fails at compile time), found
    by compiling the identity once (about 20 ms)."""

    def known(options):
        try:
            jax.jit(lambda x: x, compiler_options=options).lower(0.0).compile()
        except jax.errors.JaxRuntimeError:
            return False
        return True

    if known(_LIGHT_OPTIONS):
        return dict(_LIGHT_OPTIONS)
    return {k: v for k, v in _LIGHT_OPTIONS.items() if known({k: v})}


def light_jit(fn=None, *, light_when=None, **jit_kwargs):
    """``jax.jit`` with light compiler options, for small programs that are compiled
    far more often than they run long (closed forms, scalar root solvers over K
    tokens).

    The options are looked up at the first call, so importing compiles nothing.  JAX
    takes compiler options on top-level calls only: traced arguments (under another
    jit, ``vmap`` or ``grad``) or a call staged into another jit on constants use a
    plain ``jax.jit``, and the enclosing program's options apply.  ``light_when``
    (e.g. :func:`small_work`) picks, from the leaves of the concrete arguments, the
    calls that get the light options; the others (long runs) get XLA's defaults.
    """
    if fn is None:
        return functools.partial(light_jit, light_when=light_when, **jit_kwargs)
    plain = jax.jit(fn, **jit_kwargs)

    @functools.cache
    def light():
        return jax.jit(fn, compiler_options=_light_options(), **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        leaves = jax.tree.leaves((args, kwargs))
        if (any(isinstance(x, jax.core.Tracer) for x in leaves)
                or (light_when is not None and not light_when(leaves))):
            return plain(*args, **kwargs)
        try:
            return light()(*args, **kwargs)
        except ValueError as err:  # staged into another jit on constants
            if "compiler_options" not in str(err):
                raise
            return plain(*args, **kwargs)

    return call


def small_work(limit: int):
    """A ``light_when`` for :func:`light_jit`: the calls whose largest array argument's
    size times their integer arguments (a static length) is at most ``limit``."""

    def small(leaves):
        size = max((math.prod(np.shape(x)) for x in leaves if hasattr(x, "shape")),
                   default=1)
        steps = math.prod(x for x in leaves
                          if isinstance(x, int) and not isinstance(x, bool))
        return size * steps <= limit

    return small


def prng_jit(*static_argnames: str):
    """``jax.jit`` of a function traced under :func:`classic_threefry`.

    Every jaxalign kernel that draws random numbers is built with it.
    """

    def wrap(fn):
        return jax.jit(classic_threefry(fn), static_argnames=static_argnames)

    return wrap


def check_key(key: Any, name: str = "key") -> None:
    """Raise ``ValueError`` unless ``key`` is a typed PRNG key (``jax.random.key``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jax.dtypes.prng_key):
        raise ValueError(
            f"{name} must be a typed PRNG key made with jax.random.key(seed), got "
            f"{type(key).__name__} with dtype {dtype}; legacy uint32 keys from "
            "jax.random.PRNGKey and plain integers are not accepted"
        )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` >= ``minimum`` or raise ``ValueError``."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        as_int = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            as_int = int(value)
        else:
            raise ValueError(
                f"{name} must be an integer >= {minimum}, got {value!r}"
            ) from None
    if as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def check_real(value: Any, name: str, *, minimum: float | None = None,
               allow_inf: bool = False) -> None:
    """Raise ``ValueError`` if a concrete scalar/array is NaN, infinite or too small.

    Traced values are not inspected (validation never branches on values under jit).
    """
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real, got dtype {arr.dtype}")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} must not be NaN, got {value!r}")
    if not allow_inf and np.any(np.isinf(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and np.any(arr < minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def float_dtype(*xs: Any):
    """The floating dtype the inputs promote to (default float when all are ints)."""
    dtypes = [jnp.result_type(x) for x in xs]
    dtype = jnp.result_type(*dtypes) if dtypes else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def log_tolerance(dtype) -> float:
    """Tolerance on |sum(p) - 1| at model construction: sqrt(eps) of the dtype."""
    return math.sqrt(float(jnp.finfo(dtype).eps))


def adopt_public_names(namespace: dict) -> None:
    """Make a package's ``__all__`` names members of the package itself.

    Sets ``__module__`` to the package on each public object (and on a class's own
    methods), so ``help``, ``repr`` and ``doctest.testmod(package)`` treat names
    defined in private submodules as the package's own.
    """
    package = namespace["__name__"]
    for name in namespace["__all__"]:
        obj = namespace[name]
        if not hasattr(obj, "__module__"):
            continue
        obj.__module__ = package
        if isinstance(obj, type):
            for member in vars(obj).values():
                if inspect.isfunction(member):
                    member.__module__ = package


def renamed_keyword(value: Any, old_value: Any, *, old: str, new: str,
                    default: Any = None, stacklevel: int = 3) -> Any:
    """The value of keyword ``new``, or of its deprecated former name ``old``.

    A value given under ``old`` wins (with a ``DeprecationWarning`` naming both);
    giving both raises ``ValueError``; neither gives ``default``.
    """
    if old_value is None:
        return default if value is None else value
    if value is not None:
        raise ValueError(f"give {new}= only ({old}= is its deprecated name), got both")
    warnings.warn(f"{old}= is now {new}=", DeprecationWarning, stacklevel=stacklevel)
    return old_value


def check_exactly_one(**named: Any) -> str:
    """The name of the one argument that is not ``None``; ``ValueError`` unless
    exactly one is given (e.g. ``num_candidates`` or ``log_num_candidates``)."""
    given = [name for name, value in named.items() if value is not None]
    if len(given) != 1:
        values = ", ".join(f"{name}={value!r}" for name, value in named.items())
        raise ValueError(f"give exactly one of {' and '.join(named)}, got {values}")
    return given[0]


def check_length(value: Any, name: str = "length") -> int:
    """A sequence length: an integer >= 1 that JAX can hold as an integer (int32
    unless ``jax_enable_x64`` is on, when int64); beyond it every closed form
    would fail with an ``OverflowError`` deep inside a jitted call."""
    length = check_positive_int(value, name)
    int_dtype = jax.dtypes.canonicalize_dtype(np.int64)
    top = int(np.iinfo(int_dtype).max)
    if length > top:
        hint = "" if int_dtype == np.int64 else "; enable jax_enable_x64 for longer"
        raise ValueError(f"{name} must be <= {top} (the largest {int_dtype.name} JAX "
                         f"holds), got {value!r}{hint}")
    return length
