"""The curated public API: every exported name is documented, every example runs."""

import doctest
import importlib
import subprocess
import sys

import pytest

import jaxalign

MODULES = [
    name for name in jaxalign.__all__ if not name[0].isupper() and name != "__version__"
] + ["models", "cli", "plots"]


@pytest.mark.parametrize("name", MODULES)
def test_module_exports_are_documented(name):
    module = importlib.import_module(f"jaxalign.{name}")
    assert module.__doc__, name
    for attr in module.__all__:
        obj = getattr(module, attr)
        if callable(obj) or isinstance(obj, type):
            assert obj.__doc__, f"jaxalign.{name}.{attr} has no docstring"


def _docstrings():
    """``(module, docstring name)`` of every docstring with examples that
    ``doctest.testmod`` runs, one test each (so pytest-xdist spreads a module's
    examples over its workers)."""
    finder = doctest.DocTestFinder()
    return [(name, test.name) for name in MODULES
            for test in finder.find(importlib.import_module(f"jaxalign.{name}"))
            if test.examples]


@pytest.mark.parametrize(("module", "name"), _docstrings())
def test_docstring_examples_run(module, name, x64):
    tests = doctest.DocTestFinder().find(importlib.import_module(f"jaxalign.{module}"))
    (test,) = [t for t in tests if t.name == name]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    assert runner.run(test).failed == 0


def test_top_level_names():
    assert jaxalign.MemorylessLM.__doc__ and jaxalign.LinearReward.__doc__
    assert isinstance(jaxalign.__version__, str)


def test_import_is_light():
    """Importing jaxalign never imports pyplot (plots are imported on use), and the
    calculator's path (``import jaxalign``, ``jaxalign.theory``) never imports SciPy
    or the exact and sampling modules (issue 14: the import took 2.6-2.9 s); the
    exact laws and samplers import SciPy (0.2 s) only when a law needs it."""
    code = (
        "import sys, jaxalign, numpy as np\n"
        "from jaxalign import theory\n"
        "assert jaxalign.LinearReward and theory.report\n"
        "def heavy(*names):\n"
        "    top = ('scipy', 'matplotlib')\n"
        "    return [m for m in sys.modules if m.split('.')[0] in top or m in names]\n"
        "assert not heavy('jaxalign.exact', 'jaxalign.sample', 'jaxalign.sweep')\n"
        "assert jaxalign.exact.reward_law and 'jaxalign.exact' in sys.modules\n"
        "assert 'exact' in dir(jaxalign)\n"
        "from jaxalign import sample, markov, policies, estimators\n"
        "assert not heavy(), heavy()\n"
        "lm = jaxalign.MemorylessLM.from_probs([0.5, 0.5], length=3)\n"
        "law = jaxalign.exact.reward_law(lm, jaxalign.LinearReward([0.0, 1.0]))\n"
        "assert abs(float(np.exp(law.log_pmf).sum()) - 1) < 1e-12\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
