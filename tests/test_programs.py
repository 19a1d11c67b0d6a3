"""Compiled programs kept on disk (jaxalign._programs): the CLI's calculator.

The store-then-load round trip runs in a subprocess (tests/test_cli.py), where JAX's
persistent cache is off as in the CLI; here it is on (tests/conftest.py), which is
the case where a program is checked before it is kept."""

import jax
import numpy as np
import pytest

import jaxalign
from jaxalign import _programs, theory


@pytest.fixture
def store(tmp_path):
    _programs.use_directory(str(tmp_path))
    try:
        yield tmp_path
    finally:
        _programs.use_directory(None)


def _model():
    lm = jaxalign.MemorylessLM.from_probs(np.array([0.5, 0.3, 0.2]), length=37)
    return lm, jaxalign.LinearReward(np.array([0.0, 1.0, 2.5]))


def _want(lm, reward, **kw):
    _programs.use_directory(None)
    return theory.report(lm, reward, **kw)


def _path(store, lm, reward, x, **static):
    key = _programs._key("theory.report", (lm, reward, x), static)
    return store / f"theory.report-{key}.bin"


def test_damaged_file_is_replaced(store, x64):
    """A file that does not load (truncated, another build's) is removed, and the
    report is the jitted one."""
    lm, reward = _model()
    want = _want(lm, reward, kl_budget=2.0)
    _programs.use_directory(str(store))
    path = _path(store, lm, reward, jax.device_put(np.float64(2.0)), order=4,
                 by_budget=True)
    path.write_bytes(b'["lam"]\nnot an executable')
    assert theory.report(lm, reward, kl_budget=2.0) == want
    assert not path.exists() or path.read_bytes() != b'["lam"]\nnot an executable'
    assert theory.report(lm, reward, kl_budget=2.0) == want


def test_program_that_does_not_reproduce_is_not_kept(store, monkeypatch, x64):
    """With JAX's persistent cache on, the serialised program is loaded and run once
    before it is kept: one that fails (here: junk bytes) is not written."""
    from jax.experimental import serialize_executable

    assert jax.config.jax_compilation_cache_dir  # tests/conftest.py turns it on
    lm, reward = _model()
    want = _want(lm, reward, lam=0.7)
    _programs.use_directory(str(store))
    monkeypatch.setattr(serialize_executable, "serialize",
                        lambda compiled: (b"junk", None, None))
    assert theory.report(lm, reward, lam=0.7) == want
    assert list(store.iterdir()) == []


def test_unwritable_store_still_answers(tmp_path, x64):
    """A directory that cannot be created (a file in its way): the result stands."""
    lm, reward = _model()
    want = _want(lm, reward, lam=0.3)
    blocker = tmp_path / "file"
    blocker.write_text("")
    _programs.use_directory(str(blocker / "programs"))
    try:
        assert theory.report(lm, reward, lam=0.3) == want
    finally:
        _programs.use_directory(None)


def test_key_covers_everything_that_changes_a_program(monkeypatch):
    """Shapes, dtypes, pytree metadata (a model's length), static arguments and the
    sources each give another file name."""
    a = jaxalign.MemorylessLM.from_probs(np.array([0.5, 0.5]), length=4)
    b = jaxalign.MemorylessLM.from_probs(np.array([0.5, 0.5]), length=5)
    c = jaxalign.MemorylessLM.from_probs(np.array([0.2, 0.3, 0.5]), length=4)
    x32 = jax.numpy.float32(1.0)
    keys = {_programs._key("f", (m, x), {}) for m in (a, b, c)
            for x in (x32, np.int32(1))}
    assert len(keys) == 6
    key = _programs._key("f", (a, x32), {"order": 4})
    assert key != _programs._key("f", (a, x32), {"order": 3})
    assert key != _programs._key("g", (a, x32), {"order": 4})
    monkeypatch.setattr(_programs, "_source_digest", lambda: "another build")
    assert key != _programs._key("f", (a, x32), {"order": 4})
