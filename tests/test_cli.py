"""The ``jaxalign`` command line: output, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxalign import cli

BASE = ["theory", "--probs", "0.5,0.3,0.2", "--rewards", "0,1,2", "--length", "64"]


def run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_lam(capsys):
    code, out, err = run(capsys, BASE + ["--lam", "0.5", "--json"])
    assert code == 0 and err == ""
    rep = json.loads(out)
    for key in ("lam", "log_mgf", "kl", "reverse_kl", "expected_reward", "cumulants"):
        assert key in rep
    assert rep["lam"] == 0.5 and len(rep["cumulants"]) == 4
    # Independent check: the closed forms by hand for this 3-token model.
    weights = [0.5, 0.3 * math.exp(0.5), 0.2 * math.exp(1.0)]
    z = sum(weights)
    mean = (weights[1] + 2 * weights[2]) / z
    assert rep["log_mgf"] == pytest.approx(math.log(z), rel=1e-13)
    assert rep["expected_reward"] == pytest.approx(64 * mean, rel=1e-13)
    assert rep["kl"] == pytest.approx(64 * (0.5 * mean - math.log(z)), rel=1e-12)
    assert rep["reverse_kl"] == pytest.approx(64 * (math.log(z) - 0.5 * 0.7), rel=1e-12)
    assert rep["cumulants"][0] == pytest.approx(mean, rel=1e-13)


def test_json_kl_budget_and_infinite_lam(capsys):
    code, out, _ = run(capsys, BASE + ["--kl", "4", "--json", "--order", "2"])
    rep = json.loads(out)
    assert code == 0 and rep["kl"] == pytest.approx(4.0, rel=1e-12)
    assert len(rep["cumulants"]) == 2
    # A budget beyond -n log p(A_max) = 64 log 5: lam = inf, written JSON-safe.
    code, out, _ = run(capsys, BASE + ["--kl", "1000", "--json"])
    rep = json.loads(out)
    assert rep["lam"] == "inf" and rep["reverse_kl"] == "inf"
    assert rep["expected_reward"] == pytest.approx(128.0)
    assert rep["kl"] == pytest.approx(64 * math.log(5), rel=1e-13)


def test_table(capsys):
    code, out, err = run(capsys, BASE + ["--kl", "4"])
    assert code == 0 and err == ""
    for text in ("lam", "KL(Phi_lam || P)", "E_Phi[R]", "cumulants k1..k4",
                 "best-of-N", "sub-Gaussian"):
        assert text in out


def test_negative_rewards_are_values_not_options(capsys):
    code, out, _ = run(capsys, ["theory", "--probs", "0.5,0.5", "--rewards", "-1,1",
                                "--length", "2", "--lam", "-0.5", "--json"])
    assert code == 0
    rep = json.loads(out)
    assert rep["rewards"] == [-1.0, 1.0] and rep["lam"] == -0.5
    assert rep["expected_reward"] == pytest.approx(2 * math.tanh(-0.5), rel=1e-13)


@pytest.mark.parametrize("rewards", [["--rewards", "-1,0,1"], ["--rewards=-1,0,1"],
                                     ["--rewards", "-1e0,0,1"]])
def test_negative_lists_parse_either_way(capsys, rewards):
    code, out, err = run(capsys, ["theory", "--probs", "0.5,0.3,0.2", *rewards,
                                  "--length", "2", "--lam", "1", "--json"])
    assert (code, err) == (0, "") and json.loads(out)["rewards"] == [-1.0, 0.0, 1.0]


def test_minus_inf_is_a_value_with_or_without_equals(capsys):
    outs = []
    for lam in (["--lam", "-inf"], ["--lam=-inf"]):
        code, out, err = run(capsys, [*BASE, *lam, "--json"])
        assert (code, err) == (0, "")
        outs.append(json.loads(out))
    assert outs[0] == outs[1] and outs[0]["lam"] == "-inf"


BAD = [
    ["--probs", "0.5,0.3,0.3", "--rewards", "0,1,2", "--length", "4", "--lam", "1"],
    ["--probs", "0.5,-0.3,0.8", "--rewards", "0,1,2", "--length", "4", "--lam", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1,2", "--length", "4", "--lam", "1"],
    ["--probs", "a,b", "--rewards", "0,1", "--length", "4", "--lam", "1"],
    ["--probs", "1.0", "--rewards", "0", "--length", "4", "--lam", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,nan", "--length", "4", "--lam", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "0", "--lam", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "1.5", "--lam", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "4"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "4", "--lam", "1",
     "--kl", "1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "4", "--lam", "nan"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "4", "--kl", "-1"],
    ["--probs", "0.5,0.5", "--rewards", "0,1", "--length", "4", "--kl", "1",
     "--order", "0"],
    ["--rewards", "0,1", "--length", "4", "--lam", "1"],
    # OverflowError tracebacks before: the order and the length reached jit as ints.
    ["--probs", "0.5,0.3,0.2", "--rewards", "0,1,2", "--length", "8", "--lam", "1",
     "--order", "1000"],
    ["--probs", "0.5,0.3,0.2", "--rewards", "0,1,2", "--length", "1" + "0" * 30,
     "--lam", "1"],
]


@pytest.mark.parametrize("args", BAD)
def test_bad_input_exits_2_with_one_line(capsys, args):
    code, out, err = run(capsys, ["theory", *args])
    assert code == 2 and out == ""
    assert err.startswith("jaxalign: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    # Out of memory before: every raw uniform of the comparison was allocated.
    ["bench", "--num-candidates", "1000000000", "--num-samples", "1", "--length", "1"],
    ["bench", "--num-tokens", "1"],
    ["bench", "--length", "1" + "0" * 30],
])
def test_bad_bench_exits_2_with_one_line(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 2 and out == ""
    assert err.startswith("jaxalign: error: ") and err.count("\n") == 1


SWEEP_TOML = """
replicates = {replicates}
methods = ["best_of_n"]
[[model]]
name = "b"
bernoulli = 0.3
rewards = [0.0, 1.0]
[grid]
length = [4]
num_candidates = [2]
"""


def test_max_tokens_must_be_positive(capsys):
    code, out, err = run(capsys, ["sweep", "--max-tokens", "0"])
    assert code == 2 and err.startswith("jaxalign: error: --max-tokens must be > 0")


def test_huge_replicates_is_a_config_error(capsys, tmp_path):
    # A MemoryError traceback before.
    path = tmp_path / "big.toml"
    path.write_text(SWEEP_TOML.format(replicates=10_000_000_000))
    code, out, err = run(capsys, ["sweep", str(path), "--out", str(tmp_path / "r")])
    assert code == 2 and out == ""
    assert err.startswith("jaxalign: error: config key 'replicates'")
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


def test_ctrl_c_outside_the_sweep_loop_is_one_line(capsys, monkeypatch):
    # Ctrl-C while the config loads (the first seconds): a traceback before.
    def interrupt(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load_sweep_config", interrupt)
    try:
        code, out, err = run(capsys, ["sweep"])
    except KeyboardInterrupt:  # (would abort the whole pytest session)
        pytest.fail("Ctrl-C escaped cli.main: a traceback")
    assert (code, out, err) == (130, "", "jaxalign: interrupted\n")


def test_ctrl_c_before_the_run_directory_exists(capsys, monkeypatch, tmp_path):
    # "finished points are saved in X; continue with --resume" before, but X did
    # not exist and --resume failed.
    from jaxalign import sweep

    def interrupt(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_prepare_all", interrupt)
    path = tmp_path / "small.toml"
    path.write_text(SWEEP_TOML.format(replicates=16))
    out_dir = tmp_path / "r"
    code, out, err = run(capsys, ["sweep", str(path), "--out", str(out_dir)])
    assert code == 130 and out == "" and err.count("\n") == 1
    assert not out_dir.exists()
    assert "without --resume" in err and "continue with --resume" not in err


def test_no_or_unknown_command(capsys):
    for argv in ([], ["frobnicate"]):
        code, _, err = run(capsys, argv)
        assert code == 2 and err.startswith("jaxalign: error: ")


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, ["theory", "--help"])
    assert code == 0 and "--kl" in out


def test_registry_is_extensible(capsys, monkeypatch):
    def add(parser):
        parser.add_argument("--name", required=True)

    def go(args):
        print(f"hello {args.name}")
        return 0

    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, cli.Command("hello", "x", add,
                                                                     go)])
    assert run(capsys, ["hello", "--name", "world"])[:2] == (0, "hello world\n")


def test_console_script_subprocess(tmp_path):
    """The installed script runs and keeps the theory report's compiled program in
    the user's cache directory ($XDG_CACHE_HOME/jaxalign/programs); the next call
    loads it (the file is neither removed nor rewritten) and prints the same JSON,
    and a damaged file is replaced."""
    script = Path(sys.executable).with_name("jaxalign")
    command = [str(script)] if script.exists() else [sys.executable, "-m",
                                                     "jaxalign.cli"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXALIGN_NO_CACHE")}
    env["XDG_CACHE_HOME"] = str(tmp_path)

    def theory_json():
        ok = subprocess.run(command + BASE + ["--kl", "4", "--json"],
                            capture_output=True, text=True, timeout=120, env=env)
        assert ok.returncode == 0, ok.stderr
        return json.loads(ok.stdout)

    first = theory_json()
    assert first["kl"] == pytest.approx(4.0, rel=1e-12)
    (path,) = (tmp_path / "jaxalign" / "programs").iterdir()
    assert not (tmp_path / "jaxalign" / "xla").exists()
    stamp = path.stat().st_mtime_ns
    assert theory_json() == first
    assert path.stat().st_mtime_ns == stamp
    path.write_bytes(path.read_bytes()[:1000])
    assert theory_json() == first
    assert path.stat().st_size > 1000
    assert theory_json() == first


@pytest.mark.parametrize(
    "argv, environ, configured, expected",
    [
        (["theory"], {"XDG_CACHE_HOME": "/c"}, None, "/c/jaxalign/programs"),
        (["sweep"], {"XDG_CACHE_HOME": "/c"}, None, "/c/jaxalign/xla"),
        (["theory", "--no-cache"], {"XDG_CACHE_HOME": "/c"}, None, None),
        (["theory"], {"XDG_CACHE_HOME": "/c", "JAXALIGN_NO_CACHE": "1"}, None, None),
        (["theory"], {"XDG_CACHE_HOME": "/c", "JAXALIGN_NO_CACHE": "0"}, None,
         "/c/jaxalign/programs"),
        (["theory"], {"JAX_COMPILATION_CACHE_DIR": "/mine"}, None, None),
        (["theory"], {}, "/mine", None),
        (["list"], {"XDG_CACHE_HOME": "/c"}, None, None),
    ],
)
def test_compilation_cache_switches(argv, environ, configured, expected):
    args = cli.build_parser().parse_args(argv + (BASE[1:] + ["--kl", "1"]
                                                 if argv[0] == "theory"
                                                 else []))
    assert cli._cache_target(args, environ, configured) == expected


def test_exact_with_n_equal_one_in_the_list(capsys):
    # KL(BoN_1 || P) rounded to -3.6e-17 at n = 100 and optimal_reward rejected it.
    argv = ["exact", "--probs", "0.7,0.3", "--rewards", "0,1", "--length", "100",
            "--num-candidates", "1,2,4,1000", "--json"]
    assert cli.main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["kl"] for r in rows][0] == 0.0
    assert all(r["kl"] >= 0 for r in rows)


_INTERRUPT_WHILE_IMPORTING = """
import signal, sys

# A terminal's Python: a shell starts background jobs with SIGINT ignored, and
# Python then leaves it ignored (CI scripts run that way).
signal.signal(signal.SIGINT, signal.default_int_handler)

class Hook:  # delivers a Ctrl-C while jaxalign.cli is being imported
    def find_spec(self, name, path=None, target=None):
        if name == "jaxalign.cli":
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, Hook())
sys.argv = ["jaxalign", "list"]
import jaxalign.__main__ as entry
code = entry.main()
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
sys.exit(code)
"""


def test_ctrl_c_while_importing_is_one_line():
    """Interrupting NumPy's or jaxlib's import crashed the process or printed an
    ImportError traceback; the entry point defers the Ctrl-C to after the imports.
    In a fresh interpreter with Python's own SIGINT handler: run in-process it
    failed in a pytest worker that had inherited an ignored SIGINT (a test run
    started in the background by a shell)."""
    ok = subprocess.run([sys.executable, "-c", _INTERRUPT_WHILE_IMPORTING],
                        capture_output=True, text=True, timeout=120)
    assert (ok.returncode, ok.stderr) == (130, "jaxalign: interrupted\n")


_EXIT_FAST = """
import gc, sys
sys.argv = ["jaxalign", *sys.argv[1:]]
import jaxalign.__main__ as entry
frozen = gc.get_freeze_count()
code = entry.main()
print("frozen", frozen, gc.get_freeze_count() > frozen, file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv, code", [(["list"], 0), (["plot", "/nonexistent"], 2)])
def test_entry_point_leaves_the_objects_out_of_the_last_collections(argv, code):
    """The console script freezes the garbage collector once the command returns:
    the interpreter's collections at exit took 0.2-0.25 s of every run (they walk
    all of JAX's objects).  Output and exit code are those of the command."""
    ok = subprocess.run([sys.executable, "-c", _EXIT_FAST, *argv],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == code
    assert ok.stderr.endswith("frozen 0 True\n"), ok.stderr
    assert ("yang2024_equivalence" in ok.stdout) == (argv == ["list"])


# -- kl-gradients ----------------------------------------------------------------------

KLG = ["kl-gradients", "--probs", "0.5,0.3,0.2", "--length", "4"]


def test_kl_gradients_json_and_table(capsys):
    code, out, err = run(capsys, [*KLG, "--q-probs", "0.2,0.3,0.5", "--json"])
    assert (code, err) == (0, "")
    rep = json.loads(out)
    assert len(rep["rows"]) == 45 and rep["model"] == "memoryless"
    # Independent check: the KLs of n i.i.d. tokens by hand.
    p, q = [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]
    kl_qp = 4 * sum(b * math.log(b / a) for a, b in zip(p, q, strict=True))
    kl_pq = 4 * sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    assert rep["kl_qp"] == pytest.approx(kl_qp, rel=1e-12)
    assert rep["kl_pq"] == pytest.approx(kl_pq, rel=1e-12)
    rows = {r["implementation"]: r for r in rep["rows"]}
    assert rows["k1/reward_to_go/token/on_policy"]["relative_bias"] < 1e-12
    assert rows["k2/loss/token/on_policy"]["gradient_of"] == "KL(q||p)"
    assert rows["k3/loss/sequence/on_policy"]["gradient_of"] == "KL(p||q)"
    assert rows["k1/loss/token/on_policy"]["cosine"] == "nan"  # a zero gradient
    code, out, err = run(capsys, [*KLG, "--rewards", "0,1,2", "--lam", "0.7",
                                  "--trans", "0.6,0.3,0.1;0.1,0.3,0.6;0.5,0.25,0.25",
                                  "--weighting", "on_policy"])
    assert (code, err) == (0, "")
    assert "Markov p" in out and "partial KL(q||p)" in out
    assert out.count("/on_policy") == 15 and "/ratio" not in out


def test_kl_gradients_plot_writes_the_figure(capsys, tmp_path):
    path = tmp_path / "klg.png"
    code, out, err = run(capsys, [*KLG, "--q-probs", "0.2,0.3,0.5", "--weighting",
                                  "on_policy", "--plot", str(path)])
    assert (code, err) == (0, "") and "KL-penalty gradients" in out
    assert path.read_bytes()[:4] == b"\x89PNG"
    code, out, err = run(capsys, [*KLG, "--q-probs", "0.2,0.3,0.5", "--plot",
                                  str(tmp_path / "missing" / "klg.png")])
    assert code == 2 and out == "" and "cannot write --plot" in err


KLG_TRANS = "0.6,0.3,0.1;0.1,0.3,0.6;0.5,0.25,0.25"
KLG_TRANS2 = "0.2,0.3,0.5;0.4,0.4,0.2;0.1,0.1,0.8"


def _klg_library(params, p, clip=0.2, clip_form="clip", weighting="all"):
    """What ``kl-gradients --json`` must print, from ``kl_gradients.summary``
    called directly (float64)."""
    import jax

    from jaxalign import kl_gradients as kg

    rows = tuple(i for i in kg.GRID if weighting in ("all", i.weighting))
    with jax.enable_x64(True):
        s = kg.summary(params, p, clip=clip, implementations=rows,
                       clip_form=clip_form)
        norms = [float(jax.numpy.linalg.norm(g)) for g in (s.grad_kl_qp, s.grad_kl_pq)]
    table = [{"implementation": impl.name, "gradient_of": s.divergence[j],
              "cosine": float(s.cosine[j]), "relative_bias": float(s.relative_bias[j]),
              "variance": float(s.variance[j])}
             for j, impl in enumerate(s.implementations)]
    return cli._json_safe({"kl_qp": float(s.kl_qp), "kl_pq": float(s.kl_pq),
                           "grad_kl_qp_norm": norms[0], "grad_kl_pq_norm": norms[1],
                           "rows": table})


def _klg_chain():
    """The reference chain of the Markov tests, in float64."""
    import jax
    import numpy as np

    import jaxalign

    with jax.enable_x64(True):
        return jaxalign.MarkovLM.from_probs(
            np.array([0.5, 0.3, 0.2]), np.asarray(cli._matrix(KLG_TRANS, "t")),
            length=4)


def _klg_json(capsys, argv):
    code, out, err = run(capsys, argv)
    assert (code, err) == (0, "")
    rep = json.loads(out)
    return rep, {key: rep[key] for key in ("kl_qp", "kl_pq", "grad_kl_qp_norm",
                                           "grad_kl_pq_norm", "rows")}


def test_kl_gradients_clip_form_min_is_the_library(capsys):
    """At ``θ = θ_old`` the two forms differ at ``c = 0``: the clipped ratio is
    frozen (zero gradient), PPO's min form keeps ``w`` on the tie."""
    import numpy as np

    p = _klg_chain()
    params = (np.log([0.2, 0.3, 0.5]), np.log(cli._matrix(KLG_TRANS2, "t")))
    argv = [*KLG, "--q-probs", "0.2,0.3,0.5", "--trans", KLG_TRANS, "--q-trans",
            KLG_TRANS2, "--clip", "0", "--weighting", "clipped", "--json"]
    rep, got = _klg_json(capsys, [*argv, "--clip-form", "min"])
    assert rep["clip_form"] == "min" and len(rep["rows"]) == 15
    assert got == _klg_library(params, p, 0.0, "min", "clipped")
    rep, default = _klg_json(capsys, argv)  # the default is the clip form
    assert rep["clip_form"] == "clip"
    assert default == _klg_library(params, p, 0.0, "clip", "clipped")
    labels = {r["implementation"]: r["gradient_of"] for r in default["rows"]}
    labels_min = {r["implementation"]: r["gradient_of"] for r in got["rows"]}
    assert labels["k1/reward/token/clipped"] == "0"  # frozen weight
    assert labels_min["k1/reward/token/clipped"] == "KL(q||p)"
    assert labels["k3/loss/sequence/clipped"] == "KL(p||q)"  # only k's gradient
    assert labels_min["k3/loss/sequence/clipped"] == "KL(q||p)"  # (k + k') s


def test_kl_gradients_tilt_of_a_chain_is_the_time_varying_tilt(capsys):
    """``--lam`` on a chain is the exact tilt ``q ∝ p e^{λR}``: a time-varying
    chain (``jaxalign.markov.tilt``), not a homogeneous projection of it."""
    import jax

    import jaxalign

    rep, got = _klg_json(capsys, [*KLG, "--trans", KLG_TRANS, "--rewards", "0,1,2",
                                  "--lam", "0.7", "--json"])
    assert "time-varying" in rep["q"]
    with jax.enable_x64(True):
        p = _klg_chain()
        q = jaxalign.markov.tilt(p, jaxalign.LinearReward([0.0, 1.0, 2.0]), 0.7)
        assert q.log_trans.shape == (3, 3, 3)
        assert got == _klg_library((q.log_init, q.log_trans), p)
        # exact: the tilt's KL(q||p) is the library's KL of the tilt
        kl = float(jaxalign.markov.kl(p, jaxalign.LinearReward([0.0, 1.0, 2.0]), 0.7))
    assert got["kl_qp"] == pytest.approx(kl, rel=1e-12)


def test_kl_gradients_time_varying_q_trans(capsys, tmp_path):
    import numpy as np

    steps = [KLG_TRANS2, KLG_TRANS, "1,1,1;1,2,3;3,2,1"]  # rows need not sum to 1
    rep, got = _klg_json(capsys, [*KLG, "--q-probs", "0.2,0.3,0.5", "--trans",
                                  KLG_TRANS, "--q-trans", "|".join(steps),
                                  "--weighting", "on_policy", "--json"])
    assert "time-varying" in rep["q"]
    p = _klg_chain()
    params = (np.log([0.2, 0.3, 0.5]),
              np.log([cli._matrix(m, "t") for m in steps]))
    assert got == _klg_library(params, p, weighting="on_policy")
    # the same q from a TOML list of n - 1 matrices
    path = tmp_path / "q.toml"
    path.write_text("q_trans = " + json.dumps([cli._matrix(m, "t") for m in steps])
                    + '\nclip_form = "min"\n')
    rep2, from_file = _klg_json(capsys, [*KLG, "--config", str(path), "--q-probs",
                                         "0.2,0.3,0.5", "--trans", KLG_TRANS,
                                         "--weighting", "on_policy", "--json"])
    assert from_file == got and rep2["clip_form"] == "min"


KLG_BAD = [
    ["--q-probs", "0.2,0.3,0.5", "--clip", "-0.1"],
    ["--q-probs", "0.5,0.5"],
    ["--q-probs", "0.5,0.5,0.0"],
    ["--lam", "1"],
    ["--lam", "1", "--rewards", "0,1"],
    ["--lam", "1", "--rewards", "0,1,2", "--q-trans", "0.5,0.5;0.5,0.5"],
    ["--lam", "1", "--rewards", "0,1,2", "--trans", "0.5,0.5;0.5,0.5"],
    ["--q-probs", "0.2,0.3,0.5", "--trans", "1,0,0;0,1,0;0,0,1"],
    ["--q-probs", "0.2,0.3,0.5", "--trans", "0.2,0.3,0.5;0.2,0.3,0.5;0.2,0.3,0.5"],
    ["--q-probs", "0.2,0.3,0.5", "--weighting", "offline"],
    ["--q-probs", "0.2,0.3,0.5", "--lam", "1"],
    ["--q-probs", "0.2,0.3,0.5", "--clip-form", "max"],
    ["--q-probs", "0.2,0.3,0.5", "--trans", KLG_TRANS, "--q-trans",
     f"{KLG_TRANS}|{KLG_TRANS}"],  # 2 steps for n - 1 = 3
    ["--q-probs", "0.2,0.3,0.5", "--trans", KLG_TRANS, "--q-trans",
     f"{KLG_TRANS}|{KLG_TRANS}|0.5,0.5;0.5,0.5"],  # a 2 x 2 step
    ["--q-probs", "0.2,0.3,0.5", "--trans", KLG_TRANS, "--q-trans",
     f"{KLG_TRANS}|{KLG_TRANS}|1,0,1;1,1,1;1,1,1"],  # a zero
    [],
]


@pytest.mark.parametrize("args", KLG_BAD)
def test_kl_gradients_bad_input_exits_2(capsys, args):
    code, out, err = run(capsys, [*KLG, *args])
    assert code == 2 and out == ""
    assert err.startswith("jaxalign: error: ") and err.count("\n") == 1


def test_kl_gradients_zero_probability_in_p(capsys):
    code, _, err = run(capsys, ["kl-gradients", "--probs", "0.5,0.5,0", "--length",
                                "3", "--q-probs", "0.2,0.3,0.5"])
    assert code == 2 and "positive probability" in err


def test_kl_gradients_toml_equals_the_options(capsys, tmp_path):
    path = tmp_path / "model.toml"
    path.write_text('probs = [0.5, 0.3, 0.2]\nlength = 4\nlam = 0.7\n'
                    'rewards = [0, 1, 2]\ntrans = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], '
                    '[0.5, 0.25, 0.25]]\nclip = 0.1\n')
    code, from_file, err = run(capsys, ["kl-gradients", "--config", str(path),
                                        "--json"])
    assert (code, err) == (0, "")
    code, from_options, _ = run(capsys, [
        *KLG, "--rewards", "0,1,2", "--lam", "0.7", "--clip", "0.1", "--trans",
        "0.6,0.3,0.1;0.1,0.3,0.6;0.5,0.25,0.25", "--json"])
    assert code == 0 and json.loads(from_file) == json.loads(from_options)
    # the command line wins over the file
    code, out, _ = run(capsys, ["kl-gradients", "--config", str(path), "--length",
                                "3", "--json"])
    assert code == 0 and json.loads(out)["length"] == 3


@pytest.mark.parametrize(("text", "extra", "message"), [
    ("probs = [0.5, 0.5]\nlength = 2\nq_prob = [0.5, 0.5]\n", [], "unknown keys"),
    ("probs = [0.5, 'a']\nlength = 2\n", [], "must hold numbers"),
    ("probs = [0.5, 0.5]\nlength = 0\n", [], "must be an integer"),
    ("probs = [0.5, 0.5]\nlength = 2\nlam = 1.0\nrewards = [0, 1]\n",
     ["--q-probs", "0.4,0.6"], "exactly one of --lam"),
    ("length = 2\nq_probs = [0.4, 0.6]\n", [], "needs --probs and --length"),
    ("probs = [0.5, 0.5\n", [], "not valid TOML"),
    ("probs = [0.5, 0.5]\nlength = 2\nq_probs = [0.4, 0.6]\nclip_form = 'max'\n",
     [], "key 'clip_form' must be one of"),
    ("probs = [0.5, 0.5]\nlength = 2\nq_probs = [0.4, 0.6]\nq_trans = [[[1, 'a']]]\n",
     [], "must hold numbers"),
])
def test_kl_gradients_bad_toml_exits_2(capsys, tmp_path, text, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = run(capsys, ["kl-gradients", "--config", str(path), *extra])
    assert code == 2 and out == "" and message in err and err.count("\n") == 1
