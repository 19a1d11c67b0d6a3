"""Strict test configuration (STYLE.md C13)."""

import os
import zlib

os.environ.setdefault("MPLBACKEND", "Agg")

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
