"""Strict test configuration (STYLE.md C13)."""

import os
import pathlib
import zlib

os.environ.setdefault("MPLBACKEND", "Agg")
# One persistent XLA cache for the test session: the pytest workers and the
# subprocesses the tests start (CLI, devices, processes, kill and resume) compile the
# programs once between them instead of once each.  Every program is kept (minimum
# compile time 0): with the flags below most compile in under 0.5 s, and the cold
# suite's CPU time fell from 1065 s to 923 s when they were kept too.
_CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compile the test programs without LLVM's optimisation passes: the tests' programs
# are small and compile-bound, and on 2 CPU cores this cuts the cold suite's CPU time
# by about a third (test_sample + test_counts + test_policies, cold: 322 s -> 215 s
# user time) at the cost of slower code in the few long Monte Carlo runs.  Same XLA
# semantics (the HLO passes still run); users' programs keep the default level.
# Subprocesses inherit the flags: tests that add a device count append to them.
_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    os.environ["XLA_FLAGS"] = (f"{_FLAGS} --xla_backend_optimization_level=0 "
                               "--xla_llvm_disable_expensive_passes=true").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_debug_key_reuse", True)


@pytest.fixture
def key(request):
    """One deterministic key per test, stable across runs and processes."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
