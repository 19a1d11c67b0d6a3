"""The paper notebooks: jupytext percent scripts that execute under a Jupyter kernel
(SMALL mode) with their figures inline as PNG, and still run as plain scripts."""

import base64
import os
import pathlib
import runpy

import jax
import jupytext
import nbformat
import pytest
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
EXPECTED = {
    "beirami2024_best_of_n",
    "kl_penalties",
    "markov_memory",
    "mroueh2024_bounds",
    "paes2026_limits",
    "yang2024_asymptotics",
}


def test_one_notebook_per_paper():
    assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_format(path):
    text = path.read_text()
    assert text.startswith("# ---\n# jupyter:\n#   jupytext:\n")
    assert "format_name: percent" in text
    assert text.count("# %% [markdown]") >= 2  # the claim, and the sections
    assert "assert " in text  # each notebook checks its paper's claim
    assert "pyplot" not in text and "plt.show" not in text
    assert "JAXALIGN_NOTEBOOK_SMALL" in text and "JAXALIGN_NOTEBOOK_OUT" in text
    # Figures are built without pyplot, so only the inline backend's display
    # formatter turns them into PNG outputs (a text repr without it).
    assert "\n# %matplotlib inline\n" in text and "matplotlib.use" not in text


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One kernel for the module (shared compilations; each notebook starts with
    ``%reset -f``, so none sees another's names), importing this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "JAXALIGN_NOTEBOOK_OUT"}
    env["JAXALIGN_NOTEBOOK_SMALL"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                      env.get("PYTHONPATH")]))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(tmp_path_factory.mktemp("kernel")), env=env)
    yield km
    km.shutdown_kernel(now=True)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_shows_its_figures_in_jupyter(path, kernel):
    nb = jupytext.read(path)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    client = NotebookClient(nb, km=kernel, timeout=600)
    try:
        client.execute()  # raises on any error
    finally:
        if client.kc is not None:  # (the client of a kernel it does not own)
            client.kc.stop_channels()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o.data["image/png"] for o in outputs if "image/png" in o.get("data", {})]
    assert images, "no image/png output: the figures are not displayed inline"
    for image in images:
        assert base64.b64decode(image)[:4] == b"\x89PNG"


def test_notebook_runs_as_a_script(tmp_path, monkeypatch):
    # The smallest notebook, in-process: outside Jupyter, figures go to
    # JAXALIGN_NOTEBOOK_OUT, by default runs/notebooks under the working directory.
    monkeypatch.setenv("JAXALIGN_NOTEBOOK_SMALL", "1")
    monkeypatch.delenv("JAXALIGN_NOTEBOOK_OUT", raising=False)
    monkeypatch.chdir(tmp_path)
    # x64 scoped here, so the notebook's own global switch is skipped.
    with jax.enable_x64(True):
        runpy.run_path(str(ROOT / "notebooks" / "mroueh2024_bounds.py"),
                       run_name="__main__")
    assert not jax.config.jax_enable_x64
    figures = list((tmp_path / "runs" / "notebooks").glob("mroueh2024_*.png"))
    assert figures, "the script saved no figure"
    for p in figures:
        assert p.read_bytes()[:4] == b"\x89PNG"
