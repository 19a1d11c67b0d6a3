"""Strict test configuration (STYLE.md C13)."""

import os
import pathlib
import subprocess
import sys
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
# Compile the test programs cheaply: without LLVM's optimisation passes and with XLA's
# older CPU fusion code generator (the MLIR fusion emitters cost more to compile than
# the tests' programs run).  The tests' programs are small and compile-bound: on 2 CPU
# cores the cold suite's CPU time fell from 1065 s to 923 s with the first two flags
# and to 659 s with the third (wall 540 s -> 354 s, `pytest -n 2`), at the cost of
# slower code in the few long Monte Carlo runs.  Same HLO passes, so the same XLA
# semantics; users' programs keep the defaults.  Subprocesses inherit the flags: tests
# that add a device count append to them.  A jaxlib that no longer knows a flag would
# abort at start-up, so each flag is tried once in a subprocess first (about 0.7 s,
# in the controlling process only: the pytest-xdist workers inherit the result).
_FAST_FLAGS = ("--xla_backend_optimization_level=0",
               "--xla_llvm_disable_expensive_passes=true",
               "--xla_cpu_use_fusion_emitters=false")


def _known_flags(flags):
    probe = "import jax; jax.devices()"
    env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
    ok = subprocess.run([sys.executable, "-c", probe], env=env,
                        capture_output=True).returncode == 0
    if ok or len(flags) == 1:
        return list(flags) if ok else []
    return [f for flag in flags for f in _known_flags([flag])]


_FLAGS = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _FLAGS:
    os.environ["XLA_FLAGS"] = " ".join([_FLAGS, *_known_flags(_FAST_FLAGS)]).strip()

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


# The slowest test files first, so the two pytest-xdist workers (`make test`: one file
# at a time, --dist loadfile --no-loadscope-reorder) finish together: xdist's default
# order (most tests first) left test_notebooks for last, and one worker idle for 27 s
# of a 350 s first run.  Longest first by their time in that run (2-core CPU, cold
# XLA cache): markov 98 s, sample 69, public_api 67, sweep 67, counts 64,
# notebooks 51, cli 45, rl_markov 45, kl_gradients 28; then the rest as collected.
# The order changes only when each file runs, never a result.
_SLOW_FIRST = ("test_markov", "test_sample", "test_public_api", "test_sweep",
               "test_counts", "test_notebooks", "test_cli", "test_rl_markov",
               "test_kl_gradients", "test_plots", "test_theory", "test_rl",
               "test_estimators", "test_policies")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.stem
        return _SLOW_FIRST.index(name) if name in _SLOW_FIRST else len(_SLOW_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
