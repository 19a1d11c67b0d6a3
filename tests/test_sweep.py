"""Sweeps: determinism across chunks, devices and processes; resume after a kill."""

import dataclasses
import hashlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib

import numpy as np
import pytest

from jaxalign import cli, policies, sweep
from jaxalign import config as cfg
from jaxalign.store import read_results

SMALL = """
name = "small"
seed = 5
replicates = 300
chunk_size = 256
methods = ["base", "tilted", "best_of_n"]
sampling = "token"

[[model]]
name = "three"
probs = [0.5, 0.3, 0.2]
rewards = [0.0, 1.0, 2.0]

[grid]
length = [4]
kl_budget = [0.5, 2.0]
num_candidates = [4]
"""


def small_config(**changes):
    c = cfg.parse_config(tomllib.loads(SMALL))
    return c if not changes else cfg.SweepConfig(**{**c.__dict__, **changes})


def table(run_dir):
    """The results as {(point, quantity): (mc_mean, mc_stderr, mc_count, exact)}."""
    return {
        (r["point"], r["quantity"]): (
            r["mc_mean"],
            r["mc_stderr"],
            r["mc_count"],
            r["exact"],
        )
        for r in read_results(run_dir)
    }


def run_cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "jaxalign.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        **kw,
    )


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    summary = sweep.run_sweep(small_config(), str(out))
    assert summary.num_points == len(cfg.grid_points(small_config()))
    return out


def test_monte_carlo_agrees_with_exact(reference_run):
    rows = read_results(reference_run)
    assert rows
    for r in rows:
        if r["mc_mean"] is None or r["exact"] is None:
            continue
        assert r["mc_count"] == 300
        z = (r["mc_mean"] - r["exact"]) / r["mc_stderr"]
        assert abs(z) < 5, r


def test_chunk_size_does_not_change_results(reference_run, tmp_path):
    out = tmp_path / "run"
    sweep.run_sweep(small_config(chunk_size=128 * 7), str(out))
    assert table(out) == table(reference_run)


def test_resume_skips_done_points_and_matches(reference_run, tmp_path):
    out = tmp_path / "run"
    config = small_config()
    sweep.run_sweep(config, str(out))
    # Forget the last two points, as a kill would, and resume.
    journal = out / "points_done.txt"
    tags = journal.read_text().splitlines()
    journal.write_text("".join(t + "\n" for t in tags[:-2]))
    summary = sweep.run_sweep(config, str(out), resume=True)
    assert summary.num_points == 2 and summary.num_skipped == len(tags) - 2
    assert table(out) == table(reference_run)
    assert len(read_results(out)) == len(read_results(reference_run))


def _write_config(tmp_path, text=SMALL):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


def _devices_env(count):
    """The test session's XLA flags plus ``count`` simulated host devices."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}"}


def test_four_devices_match_one(reference_run, tmp_path):
    path = _write_config(tmp_path)
    out = tmp_path / "run4"
    env = _devices_env(4)
    proc = run_cli("sweep", str(path), "--out", str(out), "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr
    env_json = (out / "environment.json").read_text()
    assert '"device_count": 4' in env_json
    assert table(out) == table(reference_run)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMALL_LAW = SMALL.replace('sampling = "token"', 'sampling = "law"')


def test_two_processes_with_jax_distributed(tmp_path):
    # The multi-process gather is the same for both sampling levels (the token
    # level's sharding is checked on 4 devices above): the law level compiles in a
    # fraction of the time.
    # Two points (one per sampling kind of the gather: a base block and a
    # best-of-N block) are enough to show the two processes' samples are gathered
    # in order; every further point costs compiles and Gloo round trips in both.
    two_points = SMALL_LAW.replace('"base", "tilted", "best_of_n"',
                                   '"base", "best_of_n"')
    reference = tmp_path / "ref"
    sweep.run_sweep(cfg.parse_config(tomllib.loads(two_points)), str(reference))
    path = _write_config(tmp_path, two_points)
    out = tmp_path / "run2"
    port = _free_port()
    env = _devices_env(2)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxalign.cli", "sweep", str(path), "--out",
             str(out), "--quiet", "--coordinator", f"127.0.0.1:{port}",
             "--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **env},
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    env_json = (out / "environment.json").read_text()
    assert '"process_count": 2' in env_json and '"device_count": 4' in env_json
    assert table(out) == table(reference)


SLOW = (
    SMALL.replace("replicates = 300", "replicates = 128")
    .replace('sampling = "token"', 'sampling = "law"')
    .replace("length = [4]", "length = [2, 3, 4, 5, 6, 7, 8]")
)


def test_resume_after_a_real_kill(tmp_path):
    path = _write_config(tmp_path, SLOW)
    config = cfg.parse_config(tomllib.loads(SLOW))
    full = tmp_path / "full"
    sweep.run_sweep(config, str(full))  # in-process: the kill is what needs a process
    out = tmp_path / "killed"
    p = subprocess.Popen(
        [sys.executable, "-m", "jaxalign.cli", "sweep", str(path), "--out", str(out),
         "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    journal = out / "points_done.txt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = len(journal.read_text().splitlines())
    assert 3 <= done < len(cfg.grid_points(config))
    summary = sweep.run_sweep(config, str(out), resume=True)
    assert summary.num_skipped == done
    assert table(out) == table(full)
    assert len(read_results(out)) == len(read_results(full))


def test_one_compile_per_group_shape(tmp_path):
    config = small_config()
    before = sweep._compiled.cache_info().misses
    sweep.run_sweep(config, str(tmp_path / "a"))
    after_first = sweep._compiled.cache_info().misses
    sweep.run_sweep(small_config(seed=9), str(tmp_path / "b"))
    assert sweep._compiled.cache_info().misses == after_first
    assert after_first - before <= len(config.grid["length"]) * len(config.methods)


def test_summary_numbers(reference_run):
    rows = read_results(reference_run)
    quantities = {r["quantity"] for r in rows}
    assert {"reward_per_token", "kl_per_token"} <= quantities
    assert np.isfinite([r["exact"] for r in rows if r["exact"] is not None]).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (("replicates = 300", "replicates = 0"), "replicates"),
        (("length = [4]", "length = []"), "length"),
        (("num_candidates = [4]", "num_candidates = [0]"), "num_candidates"),
        (("kl_budget = [0.5, 2.0]", "kl_budget = [0.5, 100.0]"), "not below the max"),
        (("seed = 5", "seed = 5\ncolour = 1"), "colour"),
        (("probs = [0.5, 0.3, 0.2]",
          "markov = { sticky = 1.5, probs = [0.5, 0.3, 0.2] }"),
         "'model[0].markov.sticky'"),
        (("probs = [0.5, 0.3, 0.2]", "markov = { init = [0.5, 0.3, 0.2], trans = "
          "[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.9]] }"),
         "'model[0].markov': trans rows must sum to 1"),
    ],
)
def test_cli_bad_config_exits_2(tmp_path, capsys, change, message):
    path = _write_config(tmp_path, SMALL.replace(*change))
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxalign: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()  # validated before anything is written


def test_cli_missing_file_and_unwritable_out(tmp_path, capsys):
    assert cli.main(["sweep", str(tmp_path / "none.toml")]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = _write_config(tmp_path)
    assert cli.main(["sweep", str(path), "--out", str(blocker / "run"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "r"), "--resume"]) == 2


# sha256 (first 16 hex digits) of each point's draws -- reward, then the win indicator
# against the independent base draw where there is one -- recorded with jaxalign 0.2.0
# (commit 43a8e98) before the policy registry replaced the sweep's method code.
EMBEDDED_DRAWS_0_2_0 = {
    "model='bernoulli-0.3';length=10;method='best_of_n';delta=0.1;num_candidates=3;log_num_candidates=1.0986122886681098":
        'fa08be7faed453a8',
    "model='bernoulli-0.3';length=10;method='tilted';delta=0.1":
        '5d1440a7408b0d4d',
    "model='bernoulli-0.3';length=1280;method='best_of_n';delta=0.1;log_num_candidates=128.0":
        'd09e0a692c821812',
    "model='bernoulli-0.3';length=1280;method='tilted';delta=0.1":
        'bae0f67131d0edd1',
    "model='bernoulli-0.3';length=160;method='best_of_n';delta=0.1;num_candidates=8886111;log_num_candidates=16.000000053959727":
        '3d2da93c7fb044d0',
    "model='bernoulli-0.3';length=160;method='tilted';delta=0.1":
        '7e992d050f208d9d',
    "model='bernoulli-0.3';length=20;method='best_of_n';delta=0.1;num_candidates=8;log_num_candidates=2.0794415416798357":
        '39ca983e1eb35da6',
    "model='bernoulli-0.3';length=20;method='tilted';delta=0.1":
        'd42bf820551d4d24',
    "model='bernoulli-0.3';length=2560;method='best_of_n';delta=0.1;log_num_candidates=256.0":
        '4e03ebae4ee6265a',
    "model='bernoulli-0.3';length=2560;method='tilted';delta=0.1":
        'c7758c301adc7ec6',
    "model='bernoulli-0.3';length=320;method='best_of_n';delta=0.1;num_candidates=78962960182681;log_num_candidates=32.00000000000001":
        'f0e7495eaffc94e7',
    "model='bernoulli-0.3';length=320;method='tilted';delta=0.1":
        '2885d14a002d399c',
    "model='bernoulli-0.3';length=40;method='best_of_n';delta=0.1;num_candidates=55;log_num_candidates=4.007333185232471":
        '9a3bf06f85532bb2',
    "model='bernoulli-0.3';length=40;method='tilted';delta=0.1":
        '8a10655b8b93e65b',
    "model='bernoulli-0.3';length=640;method='best_of_n';delta=0.1;log_num_candidates=64.0":
        '321c8484368d27b4',
    "model='bernoulli-0.3';length=640;method='tilted';delta=0.1":
        '929c82ef45710a3b',
    "model='bernoulli-0.3';length=80;method='best_of_n';delta=0.1;num_candidates=2981;log_num_candidates=8.000014093678072":
        'a8a4082d1a00a4e2',
    "model='bernoulli-0.3';length=80;method='tilted';delta=0.1":
        'b194b20bd239bb8f',
    "model='four-tokens';length=16;method='base'":
        '09b8d084df61bc12',
    "model='four-tokens';length=16;method='best_of_n';num_candidates=4;log_num_candidates=1.3862943611198906":
        'd2532d6480b80292',
    "model='four-tokens';length=16;method='tilted';kl_budget=0.5":
        '97ef77771c677703',
    "model='four-tokens';length=16;method='tilted';kl_budget=8.0":
        'cac7c105b013888e',
}


def _reduced_embedded(name, **grid):
    data = tomllib.loads(cfg.example_configs()[name])
    data["replicates"] = 256  # a prefix of the full run's draws
    data["grid"].update(grid)
    return cfg.parse_config(data)


def test_embedded_sweeps_draw_the_samples_of_0_2_0(tmp_path, monkeypatch):
    captured = {}
    rows = sweep._rows

    def spy(draws, *, point, **kw):
        r = np.asarray(draws["reward"], np.float64)
        parts = [r]
        if "base" in draws:
            b = np.asarray(draws["base"], np.float64)
            parts.append(np.where(r > b, 1.0, np.where(r == b, 0.5, 0.0)))
        captured[point.tag] = hashlib.sha256(
            b"".join(p.tobytes() for p in parts)).hexdigest()[:16]
        return rows(draws, point=point, **kw)

    monkeypatch.setattr(sweep, "_rows", spy)
    configs = [
        _reduced_embedded("yang2024_equivalence"),
        _reduced_embedded("reward_kl_frontier", kl_budget=[0.5, 8.0],
                          num_candidates=[4]),
    ]
    for i, config in enumerate(configs):
        sweep.run_sweep(config, str(tmp_path / f"run{i}"))
    assert captured == EMBEDDED_DRAWS_0_2_0


class ToyLinear(policies.Policy):
    """A policy defined outside the library: g ∝ 1 + slope (s - min)/(max - min)."""

    name = "toy_linear"
    label = "toy linear"
    colour = "yellow"
    marker = "h"
    strength_keys = (policies.GridKey("slope", float, lambda v: v >= 0,
                                      "numbers >= 0"),)

    def __init__(self, slope):
        self.slope = float(slope)

    @classmethod
    def from_settings(cls, settings, lm, reward):
        return cls(settings["slope"])

    def log_pmf(self, values, log_pmf):
        on = np.isfinite(log_pmf)
        lo, hi = values[on].min(), values[on].max()
        w = np.log1p(self.slope * (values - lo) / (hi - lo))
        out = np.where(on, log_pmf + w, -np.inf)
        return out - np.logaddexp.reduce(out)


@pytest.fixture
def toy_policy():
    policies.register(ToyLinear)
    yield ToyLinear
    policies.unregister(ToyLinear.name)


NEW_METHODS = """
name = "new_methods"
seed = 11
replicates = 512
methods = ["toy_linear", "rejection", "best_of_poisson", "chi_squared",
           "win_rate_optimal", "soft_best_of_n"]
sampling = "{sampling}"

[[model]]
name = "three"
probs = [0.5, 0.3, 0.2]
rewards = [0.0, 1.0, 2.0]

[grid]
length = [6]
slope = [3.0]
threshold = [5.0]
poisson_mean = [3.0]
beta = [0.5]
strength = [4.0]
num_candidates = [4]
temperature = [0.5]
"""


@pytest.mark.parametrize("sampling", ["token", "law"])
def test_every_policy_and_a_toy_one_run_through_config_sweep_and_plot(
    sampling, toy_policy, tmp_path, x64
):
    config = cfg.parse_config(tomllib.loads(NEW_METHODS.format(sampling=sampling)))
    if sampling == "token":  # (test_policies samples every policy at both levels)
        config = dataclasses.replace(config, methods=("toy_linear",))
    out = tmp_path / "run"
    sweep.run_sweep(config, str(out))
    rows = read_results(out)
    assert {r["method"] for r in rows} == set(config.methods)
    assert {r["slope"] for r in rows if r["method"] == "toy_linear"} == {3.0}
    checked = set()
    for r in rows:
        if r["mc_mean"] is not None and r["exact"] is not None and r["mc_stderr"]:
            z = (r["mc_mean"] - r["exact"]) / r["mc_stderr"]
            assert abs(z) < 5, r
            checked.add((r["method"], r["quantity"]))
    for method in config.methods:
        for quantity in ("reward_per_token", "win_rate"):
            assert (method, quantity) in checked
        if method != "rejection":  # g is constant on its support: KL needs no MC
            assert (method, "kl_per_token") in checked
    if sampling == "law":
        # Soft best-of-N has an exact KL, below its bound log N.
        soft = [r for r in rows if r["method"] == "soft_best_of_n"
                and r["quantity"] == "kl_per_token"][0]
        assert 0 < soft["exact"] < math.log(4) / 6
        from jaxalign import plots

        paths = plots.plot_run(out, formats=("png",))
        assert [p.name for p in paths] == ["reward_kl_three_n6.png",
                                           "win_rate_kl_three_n6.png"]


def test_counts_sweep_agrees_with_exact_and_draws_what_sample_policy_draws(
        tmp_path, monkeypatch):
    captured = _spy_rows(monkeypatch)
    config = small_config(sampling="counts")
    out = tmp_path / "run"
    sweep.run_sweep(config, str(out))
    checked = 0
    for r in read_results(out):
        assert r["sampling"] == "counts"
        if r["mc_mean"] is not None and r["exact"] is not None and r["mc_stderr"]:
            assert abs((r["mc_mean"] - r["exact"]) / r["mc_stderr"]) < 5, r
            checked += 1
    assert checked >= 5
    # A point's draws are sample.policy's at level="counts" with the point's key.
    import jax

    from jaxalign import sample

    point, drawn = next(v for v in captured.values() if v[0].method == "best_of_n")
    policy = policies.BestOfN(dict(point.settings)["num_candidates"])
    with jax.enable_x64(config.x64):  # the sweep's dtype (the binomials' uniforms)
        lm, reward = config.models[0].build(point.length)
        key = jax.random.wrap_key_data(sweep.point_key_data(config, point)[0],
                                       impl=config.prng)
        direct = sample.policy(key, lm, reward, policy, config.replicates,
                               level="counts")
    np.testing.assert_array_equal(drawn * point.length, np.asarray(direct))


def test_counts_sweep_refuses_float32_counts_beyond_2_24(tmp_path, monkeypatch):
    config = small_config(sampling="counts", x64=False,
                          grid={**small_config().grid, "length": (2**24 + 1,)})
    from jaxalign.models import MemorylessLM

    def no_law(*args, **kwargs):  # refused before any exact law (minutes at 2**24)
        raise AssertionError("the exact law was computed before the refusal")

    monkeypatch.setattr(MemorylessLM, "reward_law", no_law)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        sweep.run_sweep(config, str(tmp_path / "run"))


MARKOV = """
name = "chain"
seed = 7
replicates = {replicates}
methods = ["base", "tilted", "best_of_n"]
sampling = "{sampling}"

[[model]]
name = "sticky"
markov = {{ sticky = 0.5, probs = [0.5, 0.3, 0.2] }}
rewards = [0.0, 1.0, 2.0]

[grid]
length = [{length}]
lam = [0.5]
{strength}
"""


def _spy_rows(monkeypatch):
    captured = {}
    rows = sweep._rows

    def spy(draws, *, point, **kw):
        captured[point.tag] = (point, np.asarray(draws["reward"]))
        return rows(draws, point=point, **kw)

    monkeypatch.setattr(sweep, "_rows", spy)
    return captured


def _z_checked(rows) -> set:
    checked = set()
    for r in rows:
        if r["mc_mean"] is not None and r["exact"] is not None and r["mc_stderr"]:
            assert abs((r["mc_mean"] - r["exact"]) / r["mc_stderr"]) < 5, r
            checked.add((r["point"], r["quantity"]))
    return checked


def test_markov_law_sweep_agrees_with_the_chain_exactly_and_plots(tmp_path):
    import jax

    from jaxalign import exact, markov, plots

    config = cfg.parse_config(tomllib.loads(MARKOV.format(
        replicates=2000, sampling="law", length=6,
        strength="delta = [0.1]\nnum_candidates = [4]")))
    out = tmp_path / "run"
    sweep.run_sweep(config, str(out))
    rows = read_results(out)
    checked = _z_checked(rows)
    by = {(r["method"], r["lam"], r["delta"], r["num_candidates"], r["quantity"]): r
          for r in rows}
    assert len(checked) >= 12
    with jax.enable_x64(True):
        lm, reward = config.models[0].build(6)
        assert isinstance(lm, markov.MarkovLM)
        # Exact values: the chain's own closed forms and exact.policy_law.
        closed = markov.tilt_summary(lm, reward, 0.5)
        tilted = by["tilted", 0.5, None, None, "reward_per_token"]
        assert tilted["exact"] == pytest.approx(float(closed.mean) / 6, rel=1e-12)
        # The limits at the fixed lam = 0.5, from an independent eigen-solve of
        # P_lam(a, b) = P(a, b) e^{lam r(b)}: Lambda', Lambda'', lam Lambda' - Lambda.
        p_mat = 0.5 * np.eye(3) + 0.5 * np.array([[0.5, 0.3, 0.2]] * 3)
        r_vec = np.array([0.0, 1.0, 2.0])

        def scgf(lam):
            return np.log(max(np.linalg.eigvals(p_mat * np.exp(lam * r_vec)).real))

        h = 1e-4
        d1 = (scgf(0.5 + h) - scgf(0.5 - h)) / (2 * h)
        d2 = (scgf(0.5 + h) - 2 * scgf(0.5) + scgf(0.5 - h)) / h**2
        assert tilted["asymptotic"] == pytest.approx(d1, rel=1e-7)
        var_row = by["tilted", 0.5, None, None, "variance_per_token"]
        assert var_row["asymptotic"] == pytest.approx(d2, rel=1e-5)
        kl_row = by["tilted", 0.5, None, None, "kl_per_token"]
        assert kl_row["asymptotic"] == pytest.approx(0.5 * d1 - scgf(0.5), rel=1e-7)
        kl = by["tilted", 0.5, None, None, "kl_per_token"]["exact"]
        assert kl == pytest.approx(float(closed.kl) / 6, rel=1e-9)
        law = exact.policy_law(lm, reward, policies.Tilted(0.5))
        assert tilted["exact"] == pytest.approx(float(law.expected_reward) / 6,
                                                rel=1e-9)
        for n_cand in (4,):
            law = exact.policy_law(lm, reward, policies.BestOfN(n_cand))
            for quantity, value in (("reward_per_token", law.expected_reward / 6),
                                    ("kl_per_token", law.kl / 6),
                                    ("win_rate", law.win_rate)):
                row = by["best_of_n", None, None, n_cand, quantity]
                assert row["exact"] == pytest.approx(float(value), rel=1e-12)
        # The asymptotic x*(delta) is the chain's own limit, not a memoryless one.
        x_star = float(markov.limit_reward_per_token(lm, reward, 0.1))
        for method in ("tilted", "best_of_n"):
            row, = (r for r in rows if r["method"] == method and r["delta"] == 0.1
                    and r["quantity"] == "reward_per_token")
            assert row["asymptotic"] == pytest.approx(x_star, rel=1e-12)
        base = markov.expected_reward(lm, reward, 0.0)
        row = by["base", None, None, None, "reward_per_token"]
        assert row["exact"] == pytest.approx(float(base) / 6, rel=1e-12)
    paths = plots.plot_run(out, formats=("png",))
    assert [p.name for p in paths] == ["reward_kl_sticky_n6.png",
                                       "win_rate_kl_sticky_n6.png"]


def test_markov_token_sweep_agrees_with_exact_and_draws_what_sample_policy_draws(
        tmp_path, monkeypatch):
    import jax

    from jaxalign import sample

    captured = _spy_rows(monkeypatch)
    # Rejection has no token sampler of its own: it reweights the chain's draws.
    text = MARKOV.format(replicates=300, sampling="token", length=4,
                         strength="num_candidates = [4]\nthreshold = [5.0]")
    config = cfg.parse_config(tomllib.loads(text.replace(
        '"best_of_n"]', '"best_of_n", "rejection"]')))
    out = tmp_path / "run"
    sweep.run_sweep(config, str(out))
    rows = read_results(out)
    assert {r["sampling"] for r in rows} == {"token"}
    checked = _z_checked(rows)
    assert {q for _, q in checked} >= {"reward_per_token", "variance_per_token",
                                       "win_rate", "kl_per_token"}
    assert len({p for p, _ in checked}) == 4
    assert {p.method for p, _ in captured.values()} >= {"rejection"}
    # A point's draws are sample.policy's at level="token" with the point's key.
    with jax.enable_x64(config.x64):
        lm, reward = config.models[0].build(4)
        for point, drawn in captured.values():
            if point.method == "base":
                continue
            policy = point.policy.from_settings(dict(point.settings), lm, reward)
            key = jax.random.wrap_key_data(sweep.point_key_data(config, point)[0],
                                           impl=config.prng)
            direct = sample.policy(key, lm, reward, policy, config.replicates,
                                   level="token")
            np.testing.assert_array_equal(drawn * point.length, np.asarray(direct))


def test_time_inhomogeneous_chain_law_sweep_point_against_enumeration(tmp_path):
    """One law-level sweep point on a chain with one matrix per step: the tilt's
    and best-of-4's exact values against all 2^3 sequences, and no limit columns
    (a time-inhomogeneous chain has no Perron root)."""
    import itertools

    init = np.array([0.6, 0.4])
    trans = np.array([[[0.9, 0.1], [0.3, 0.7]], [[0.5, 0.5], [0.2, 0.8]]])
    config = cfg.parse_config(tomllib.loads("""
name = "steps"
replicates = 500
methods = ["tilted", "best_of_n"]
sampling = "law"
[[model]]
name = "steps"
markov = { init = [0.6, 0.4], trans = [[[0.9, 0.1], [0.3, 0.7]],
                                       [[0.5, 0.5], [0.2, 0.8]]] }
rewards = [0.0, 1.0]
[grid]
length = [3]
lam = [0.5]
num_candidates = [4]
"""))
    out = tmp_path / "run"
    sweep.run_sweep(config, str(out))
    rows = read_results(out)
    assert len(_z_checked(rows)) >= 6
    by = {(r["method"], r["quantity"]): r for r in rows}
    seqs = np.array(list(itertools.product((0, 1), repeat=3)))
    p = init[seqs[:, 0]] * trans[0][seqs[:, 0], seqs[:, 1]] * trans[1][
        seqs[:, 1], seqs[:, 2]]
    rew = seqs.sum(axis=1).astype(float)
    q = p * np.exp(0.5 * rew) / (p @ np.exp(0.5 * rew))
    assert by["tilted", "reward_per_token"]["exact"] == pytest.approx(
        q @ rew / 3, rel=1e-12)
    assert by["tilted", "kl_per_token"]["exact"] == pytest.approx(
        q @ np.log(q / p) / 3, rel=1e-10)
    assert by["tilted", "variance_per_token"]["exact"] == pytest.approx(
        (q @ rew**2 - (q @ rew) ** 2) / 3, rel=1e-10)
    # Best-of-4 with uniform ties: F(s)^4 - F(s^-)^4 on the enumerated law of R.
    values = np.arange(4.0)
    pmf = np.array([p[rew == v].sum() for v in values])
    cdf = np.cumsum(pmf)
    bon = cdf**4 - np.r_[0.0, cdf[:-1]] ** 4
    assert by["best_of_n", "reward_per_token"]["exact"] == pytest.approx(
        bon @ values / 3, rel=1e-12)
    assert by["best_of_n", "kl_per_token"]["exact"] == pytest.approx(
        bon @ np.log(bon / pmf) / 3, rel=1e-10)
    for quantity in ("reward_per_token", "variance_per_token", "kl_per_token"):
        assert by["tilted", quantity]["asymptotic"] is None
    # Its figures draw the exact curves at its one length, and no n -> infinity one.
    from jaxalign import plots

    paths = plots.plot_run(out, formats=("png",))
    assert [p.name for p in paths] == ["reward_kl_steps_n3.png",
                                       "win_rate_kl_steps_n3.png"]
