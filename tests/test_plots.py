"""Figures render from real runs / real computations, with the expected artists."""

import math
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import jaxalign
from jaxalign import config, exact, plots, store, sweep, theory

Q = 0.3  # Bernoulli(0.3) tokens, reward 0/1
DELTA = 0.25
LENGTHS = (4, 8)


def _legend_texts(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _bernoulli_lambda(delta):
    """Per-token λ_δ for Bernoulli(Q), 0/1 reward, by brentq on the closed form."""

    def kl(lam):
        s = Q * math.exp(lam) / (1 - Q + Q * math.exp(lam))  # tilted success prob
        return s * math.log(s / Q) + (1 - s) * math.log((1 - s) / (1 - Q))

    return scipy.optimize.brentq(lambda lam: kl(lam) - delta, 1e-9, 20.0, xtol=1e-14)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    cfg = config.parse_config({
        "name": "plots-test",
        "seed": 0,
        "replicates": 256,
        "methods": ["tilted", "best_of_n"],
        "sampling": "law",  # the figures, not the token sampler, are under test
        "model": [{"name": "bern", "bernoulli": Q, "rewards": [0.0, 1.0]}],
        "grid": {"length": list(LENGTHS), "delta": [DELTA], "kl_budget": [0.5]},
    })
    out = tmp_path_factory.mktemp("run")
    sweep.run_sweep(cfg, str(out))
    return out


@pytest.fixture(scope="module")
def model64():
    with jax.enable_x64(True):  # float64 arrays; the tests scope x64 themselves
        return (jaxalign.MemorylessLM.bernoulli(Q, length=1),
                jaxalign.LinearReward([0.0, 1.0]))


def test_reward_kl_artists_and_values(run_dir, model64):
    rows = store.read_results(run_dir)
    lm, reward = model64
    with jax.enable_x64(True):
        fig = plots.reward_kl(rows, lm, reward, length=8)
    (ax,) = fig.axes[:1]
    assert "KL per token" in ax.get_xlabel() and "nats" in ax.get_xlabel()
    assert "reward per token" in ax.get_ylabel()
    assert len(ax.child_axes) == 2  # sequence-level secondary axes (top, right)
    texts = " | ".join(_legend_texts(ax))
    for want in ("optimal frontier", "tilted policy", "best-of-N, exact",
                 "at its exact KL", r"\log N"):
        assert want in texts
    # Three error-bar series: tilted, best-of-N at its KL, best-of-N at the bound.
    assert len(ax.containers) == 3
    frontier, bon_curve = ax.lines[0], ax.lines[1]
    # The frontier passes through the exact tilted values of the run (interpolated
    # on a 96-point curve; the curvature error is far below 1e-3 here).
    at8 = [r for r in rows if r["length"] == 8 and r["method"] == "tilted"
           and r["quantity"] in ("reward_per_token", "kl_per_token")]
    by_point = {}
    for r in at8:
        by_point.setdefault(r["point"], {})[r["quantity"]] = r["exact"]
    for v in by_point.values():
        y = np.interp(v["kl_per_token"], *frontier.get_data())
        assert abs(y - v["reward_per_token"]) < 1e-3
    # Closed form for Bernoulli: frontier(δ) = tilted success probability at λ_δ.
    x, y = frontier.get_data()
    i = len(x) // 2
    lam = _bernoulli_lambda(x[i])
    assert y[i] == pytest.approx(Q * math.exp(lam) / (1 - Q + Q * math.exp(lam)),
                                 abs=1e-9)
    # The best-of-N curve stays below the frontier (Gibbs), and holds the run's
    # exact best-of-N point.
    xb, yb = bon_curve.get_data()
    for xi, yi in list(zip(xb, yb, strict=True))[1::12]:
        lam_i = _bernoulli_lambda(xi)
        assert yi <= Q * math.exp(lam_i) / (1 - Q + Q * math.exp(lam_i)) + 1e-9
    bon = {r["quantity"]: r for r in rows if r["length"] == 8
           and r["method"] == "best_of_n"}
    assert abs(np.interp(bon["kl_per_token"]["exact"], xb, yb)
               - bon["reward_per_token"]["exact"]) < 2e-3
    # The MC markers are the run's Monte Carlo means.
    tilted_bars = ax.containers[0]
    ys = np.sort(tilted_bars.lines[0].get_ydata())
    want = sorted(r["mc_mean"] for r in rows if r["length"] == 8
                  and r["method"] == "tilted" and r["quantity"] == "reward_per_token")
    np.testing.assert_allclose(ys, want)


def test_bon_vs_rl_panels(run_dir, model64):
    rows = store.read_results(run_dir)
    lm, reward = model64
    with jax.enable_x64(True):
        fig = plots.bon_vs_rl(rows, lm, reward)
    ax_r, ax_kl, ax_gap = fig.axes[:3]
    for ax in (ax_r, ax_kl, ax_gap):
        assert ax.get_xlabel() == "sequence length n"
        assert ax.get_xscale() == "log"
        assert ax.get_legend() is not None
    assert ax_gap.get_yscale() == "log"
    assert "nats" in ax_kl.get_ylabel()
    # x* from the run's asymptotic column = tilted success probability at λ_δ.
    lam = _bernoulli_lambda(DELTA)
    x_star = Q * math.exp(lam) / (1 - Q + Q * math.exp(lam))
    hlines = [ln for ln in ax_r.lines if len(set(ln.get_ydata())) == 1
              and ln.get_linestyle() == "--"]
    assert len(hlines) == 1 and hlines[0].get_ydata()[0] == pytest.approx(x_star)
    delta_lines = [ln for ln in ax_kl.lines if ln.get_linestyle() == "--"]
    assert delta_lines[0].get_ydata()[0] == DELTA
    # The (log n)/(2 λ n) prediction uses the right λ_δ.
    pred = [ln for ln in ax_gap.lines if ln.get_linestyle() == "--"][0]
    xs, ys = pred.get_data()
    np.testing.assert_allclose(ys, np.log(xs) / (2 * lam * xs), rtol=1e-9)


def test_plot_run_writes_png_and_pdf(run_dir):
    paths = plots.plot_run(run_dir)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [f"bon_vs_rl_bern_delta{DELTA:g}.{e}" for e in ("pdf", "png")]
        + [f"{kind}_bern_n{n}.{e}" for kind in ("reward_kl", "win_rate_kl")
           for n in LENGTHS for e in ("pdf", "png")]
    )
    for p in paths:
        assert p.parent == run_dir / "plots"
        head = p.read_bytes()[:8]
        assert head.startswith(b"%PDF" if p.suffix == ".pdf" else b"\x89PNG")


def test_scaled_cumulants_from_exact_law_draws(model64):
    lm1, reward = model64
    lam, lengths, ts = 0.7, np.array([4, 16, 64]), np.array([-0.5, 0.5])
    rng = np.random.default_rng(0)
    kap, se, sc, sse = [], [], [], []
    with jax.enable_x64(True):
        closed = np.asarray(theory.cumulants(lm1, reward, 3, lam))
        scgf_cf = np.array([float(theory.scgf(lm1, reward, t, lam)) for t in ts])
        renyi = np.array([float(theory.scgf_renyi(lm1, reward, t, lam)) for t in ts])
        for n in lengths:
            law = exact.tilted_law(jaxalign.MemorylessLM.bernoulli(Q, length=int(n)),
                                   reward, lam)
            pmf = np.exp(np.asarray(law.log_pmf))
            draws = rng.choice(np.asarray(law.values), size=(8, 512), p=pmf / pmf.sum())
            k = np.array([[scipy.stats.kstat(b, m) / n for m in (1, 2, 3)]
                          for b in draws])
            kap.append(k.mean(0))
            se.append(k.std(0, ddof=1) / math.sqrt(8))
            s = np.array([[np.log(np.mean(np.exp(t * b))) / n for t in ts]
                          for b in draws])
            sc.append(s.mean(0))
            sse.append(s.std(0, ddof=1) / math.sqrt(8))
    fig = plots.scaled_cumulants(lengths, kap, se, closed, t=ts, scgf=sc,
                                 scgf_stderr=sse, scgf_closed_form=scgf_cf,
                                 scgf_renyi=renyi)
    assert len(fig.axes) == 4
    for m, ax in enumerate(fig.axes[:3]):
        assert ax.get_ylabel() == rf"$\kappa_{m + 1}(R)/n$"
        assert len(ax.collections) == 1  # the 95% band
        dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        assert dashed[0].get_ydata()[0] == pytest.approx(closed[m])
    ax = fig.axes[3]
    assert len(ax.collections) == len(ts)
    assert any("H_{1+t}" in t for t in _legend_texts(ax))
    with pytest.raises(ValueError, match="cumulants"):
        plots.scaled_cumulants(lengths, kap[:2], se, closed)


def test_large_deviations_exact_and_bahadur_rao(model64):
    _, reward = model64
    lengths, xs = np.array([10, 40, 160]), np.array([0.5, 0.7])
    with jax.enable_x64(True):
        lm1 = jaxalign.MemorylessLM.bernoulli(Q, length=1)
        rate = np.array([float(theory.rate_function(lm1, reward, x)) for x in xs])
        ex, br = [], []
        for n in lengths:
            lm = jaxalign.MemorylessLM.bernoulli(Q, length=int(n))
            ex.append(np.asarray(exact.log_tail(exact.reward_law(lm, reward), n * xs)))
            br.append(np.asarray(exact.bahadur_rao_log_tail(lm, reward, n * xs,
                                                             span=1.0)))
    ex, br = np.array(ex), np.array(br)
    # Independent route for the exact tail: scipy's binomial survival function.
    sf = np.array([[scipy.stats.binom.logsf(math.ceil(n * x) - 1, n, Q) for x in xs]
                   for n in lengths])
    np.testing.assert_allclose(ex, sf, rtol=1e-8)
    fig = plots.large_deviations(lengths, xs, rate, ex, bahadur_rao_log_tail=br)
    ax, ax2 = fig.axes
    dotted = [ln for ln in ax.lines
              if ln.get_linestyle() == ":" and len(ln.get_xdata())]
    np.testing.assert_allclose(sorted(ln.get_ydata()[0] for ln in dotted), sorted(rate))
    texts = " | ".join(_legend_texts(ax))
    assert "rate function" in texts and "Bahadur" in texts
    # Right panel: log(P/P_BR) shrinks with n for each x.
    for ln in ax2.lines[: len(xs)]:
        y = np.abs(ln.get_ydata())
        assert y[-1] < y[0]
    with pytest.raises(ValueError, match="exact_log_tail"):
        plots.large_deviations(lengths, xs, rate, ex[:2])


def test_best_of_n_kl_and_bounds(model64):
    num = np.array([1, 2, 4, 8, 16, 64, 256])
    exact_kl = {}
    with jax.enable_x64(True):
        for size in (4, 16):
            lm = jaxalign.MemorylessLM.uniform(size, length=1)
            r = jaxalign.LinearReward(np.arange(size, dtype=np.float64))
            exact_kl[f"L = {size}"] = np.asarray(
                exact.best_of_n(lm, r, num_candidates=num).kl)
    panel = plots.KLPanel("uniform over L outcomes", num, exact_kl,
                          saturation={k: math.log(int(k[4:])) for k in exact_kl})
    fig = plots.best_of_n_kl([panel])
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and "nats" in ax.get_ylabel()
    formula = [ln for ln in ax.lines if ln.get_linestyle() == "--"][0]
    xs, ys = formula.get_data()
    np.testing.assert_allclose(ys, np.log(xs) - (xs - 1) / xs)
    assert len(_legend_texts(ax)) == 3
    # Saturation (Beirami et al.): the exact KL stays below log L.
    for k, v in exact_kl.items():
        assert np.all(v <= math.log(int(k[4:])) + 1e-12)

    lm1, reward = model64
    with jax.enable_x64(True):
        lams = np.linspace(0.0, 3.0, 16)
        kls = np.array([float(theory.kl(lm1, reward, t)) for t in lams])
        gain = np.array([float(theory.expected_reward(lm1, reward, t))
                         for t in lams]) - Q
    bound = np.sqrt(2 * 0.25 * kls)
    fig = plots.bounds({"tilt (optimal)": plots.Curve(kls, gain)},
                       {"Hoeffding": plots.Curve(kls, bound)},
                       num_candidates=num[1:],
                       divergences={"KL": (exact_kl["L = 4"][1:],
                                           np.log(num[1:]) - (num[1:] - 1) / num[1:])})
    ax, ax2 = fig.axes
    assert np.all(ax.lines[0].get_ydata() <= ax.lines[1].get_ydata() + 1e-12)
    assert ax2.get_yscale() == "log" and len(ax2.lines) == 2
    with pytest.raises(ValueError, match="num_candidates"):
        plots.bounds({}, {}, divergences={})


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        plots.reward_kl([])
    with pytest.raises(ValueError, match="rows"):
        plots.reward_kl("results.csv")
    row = {"point": "a", "model": "m", "length": 4, "method": "tilted",
           "quantity": "reward_per_token", "delta": None}
    with pytest.raises(ValueError, match="delta"):
        plots.bon_vs_rl([row])
    with pytest.raises(ValueError, match="length=5"):
        plots.reward_kl([row], length=5)
    with pytest.raises(ValueError, match="run_dir"):
        plots.plot_run(tmp_path)
    with pytest.raises(ValueError, match="panels"):
        plots.best_of_n_kl([])


def test_import_does_not_load_matplotlib():
    code = ("import sys, jaxalign, jaxalign.plots; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reward_kl_float32_theory_only():
    lm = jaxalign.MemorylessLM.bernoulli(Q, length=8)  # float32 (x64 off)
    assert lm.log_probs.dtype == np.float32
    fig = plots.reward_kl(None, lm, jaxalign.LinearReward([0.0, 1.0]), length=8,
                          best_of_n_max=16, model="bern")
    ax = fig.axes[0]
    assert ax.get_title() == "Reward vs KL: bern, n = 8"
    x, y = ax.lines[0].get_data()
    assert x[0] == 0.0 and y[0] == pytest.approx(Q, rel=1e-6)
    assert np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)
    # The view covers the bound's x-position for N = 16; the exact best-of-N curve
    # is clipped to the view.
    assert ax.get_xlim()[1] >= (math.log(16) - 15 / 16) / 8
    xb, _ = ax.lines[1].get_data()
    assert xb.dtype == np.float32 and xb.max() <= ax.get_xlim()[1]
    with pytest.raises(ValueError, match="length"):
        plots.reward_kl(None, lm, jaxalign.LinearReward([0.0, 1.0]))


def test_win_rate_kl_draws_best_of_n_under_the_frontier():
    with jax.enable_x64(True):
        lm = jaxalign.MemorylessLM.bernoulli(Q, length=4)
        fig = plots.win_rate_kl(None, lm, jaxalign.LinearReward([0.0, 1.0]), length=4,
                                best_of_n_max=64)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "win rate against the base"
    assert "win-rate frontier" in " | ".join(_legend_texts(ax))
    (fx, fy), (bx, by) = ax.lines[0].get_data(), ax.lines[1].get_data()
    # Both start at the base (KL 0, win rate 1/2) and rise; the frontier reaches
    # past best-of-N's largest KL.  (That best-of-N lies strictly below it is
    # checked exactly in test_policies.)
    assert fx[0] == pytest.approx(0.0, abs=1e-12) and fy[0] == pytest.approx(0.5)
    assert by[0] == pytest.approx(0.5) and np.all(np.diff(fy) > 0)
    assert fx.max() >= bx.max() and np.all(by < 1)


def test_win_rate_kl_needs_the_reward_without_rows():
    lm = jaxalign.MemorylessLM.bernoulli(Q, length=4)
    with pytest.raises(ValueError, match="reward"):
        plots.win_rate_kl(None, lm, None, length=4)


def test_kl_penalty_gradients_bars_and_value_lines(tmp_path):
    from jaxalign import kl_gradients as kg

    with jax.enable_x64(True):
        p = jaxalign.MarkovLM.sticky([0.6, 0.4], 0.5, length=4)
        params = (jax.numpy.array([0.3, 0.0]),
                  jax.numpy.array([[0.5, 0.0], [0.0, 0.2]]))
        rows = [i for i in kg.GRID if i.weighting == "on_policy"]
        s = kg.summary(params, p, implementations=rows)
        v = kg.value_moments(params, p)
    fig = plots.kl_penalty_gradients(s, v)
    ax_cos, ax_bias, ax_var, ax_val = fig.axes
    labels = [t.get_text() for t in ax_cos.get_yticklabels()]
    assert labels[0] == "k1/reward/token" and len(labels) == 15
    widths = [b.get_width() for b in ax_cos.patches]
    cos = np.asarray(s.cosine)
    np.testing.assert_allclose(widths, np.where(np.isfinite(cos), cos, 0.0))
    assert sum("zero gradient" in t.get_text() for t in ax_cos.texts) == 2  # k1 loss
    np.testing.assert_allclose([b.get_width() for b in ax_bias.patches],
                               np.asarray(s.relative_bias))
    assert ax_var.get_xscale() == "log" and ax_val.get_yscale() == "log"
    assert len(ax_val.lines) == 6 and len(_legend_texts(ax_val)) == 6
    np.testing.assert_allclose(ax_val.lines[1].get_ydata(),
                               np.asarray(v.sequence_variance[0]))
    legend = fig.legends[0]
    assert "∇ KL(q||p)" in [t.get_text() for t in legend.get_texts()]
    fig.savefig(tmp_path / "klg.png")
    assert (tmp_path / "klg.png").read_bytes()[:4] == b"\x89PNG"
    assert len(plots.kl_penalty_gradients(s).axes) == 3  # no value panel
    with pytest.raises(ValueError, match="at least one implementation"):
        plots.kl_penalty_gradients(s._replace(implementations=()))


# ------------------------------------------------------------ chains (memory)

CHAIN_P = np.array([[0.75, 0.15, 0.1], [0.25, 0.65, 0.1], [0.25, 0.15, 0.6]])
CHAIN_MU = np.array([0.5, 0.3, 0.2])  # the sticky chain s = 0.5, p = mu
CHAIN_R = np.array([0.0, 1.0, 2.0])
CHAIN_LENGTHS = (4, 6)


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    cfg = config.parse_config({
        "name": "chain-plots", "seed": 0, "replicates": 256,
        "methods": ["tilted", "best_of_n"], "sampling": "law",
        "model": [{"name": "sticky", "rewards": list(CHAIN_R),
                   "markov": {"sticky": 0.5, "probs": list(CHAIN_MU)}}],
        "grid": {"length": list(CHAIN_LENGTHS), "delta": [0.1], "kl_budget": [0.5]},
    })
    out = tmp_path_factory.mktemp("chain")
    sweep.run_sweep(cfg, str(out))
    return out, cfg.models[0]


def _enumerated_frontier(n, kl_per_token):
    """E_φ[R]/n of the tilt with KL(φ‖P) = n x, over all 3^n sequences (brentq on
    λ), independent of jaxalign.markov."""
    import itertools

    seqs = np.array(list(itertools.product(range(3), repeat=n)))
    logp = np.log(CHAIN_MU[seqs[:, 0]]) + np.log(
        CHAIN_P[seqs[:, :-1], seqs[:, 1:]]).sum(axis=1)
    rew = CHAIN_R[seqs].sum(axis=1)

    def mean_kl(lam):
        w = logp + lam * rew
        q = np.exp(w - np.logaddexp.reduce(w))
        return q @ rew, q @ (np.log(np.maximum(q, 1e-300)) - logp)

    lam = scipy.optimize.brentq(lambda lam: mean_kl(lam)[1] - n * kl_per_token,
                                1e-12, 50.0, xtol=1e-15)
    return mean_kl(lam)[0] / n


def _eig_scgf(lam):
    """Λ(λ) = log ρ(P_λ), P_λ(a, b) = P(a, b) e^{λ r(b)}, by numpy.linalg.eigvals."""
    return math.log(max(np.linalg.eigvals(CHAIN_P * np.exp(lam * CHAIN_R)[None, :])
                        .real))


def _eig_rates(lam, h=1e-5):
    """(Λ'(λ), λΛ' - Λ) from the eigen-solve, Λ' by a central difference."""
    d = (_eig_scgf(lam + h) - _eig_scgf(lam - h)) / (2 * h)
    return d, lam * d - _eig_scgf(lam)


def test_chain_reward_kl_draws_the_exact_frontier_and_the_perron_limit(chain_run):
    run_dir, spec = chain_run
    rows = store.read_results(run_dir)
    n = 4
    with jax.enable_x64(True):
        lm, reward = spec.build(n)
        fig = plots.reward_kl(rows, lm, reward, length=n)
    ax = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in ax.lines}
    frontier = by_label[f"optimal frontier, exact at n = {n}"]
    limit, = (ln for label, ln in by_label.items() if label.startswith(r"$n\to\infty$"))
    assert limit.get_linestyle() == "--"
    assert "best-of-N, exact" in by_label
    # The exact finite-n frontier, by enumeration of the 81 sequences.
    x, y = frontier.get_data()
    for i in (len(x) // 4, len(x) // 2, len(x) - 3):
        assert y[i] == pytest.approx(_enumerated_frontier(n, x[i]), rel=1e-9)
    # The n -> infinity frontier: (λΛ' - Λ, Λ') of the eigen-solve, at the λ whose
    # Λ' is the line's y.
    xl, yl = limit.get_data()
    for i in (len(xl) // 3, 2 * len(xl) // 3):
        lam = scipy.optimize.brentq(lambda lam, i=i: _eig_rates(lam)[0] - yl[i],
                                    1e-9, 50.0, xtol=1e-13)
        assert xl[i] == pytest.approx(_eig_rates(lam)[1], rel=1e-6)
    # Memory costs reward at finite n: the finite frontier is below the limit.
    assert np.interp(xl[len(xl) // 2], x, y) < yl[len(xl) // 2]
    # The run's exact tilted and best-of-N values sit on their exact curves.
    for method, curve in (("tilted", frontier), ("best_of_n", by_label[
            "best-of-N, exact"])):
        pts = {}
        for r in rows:
            if r["length"] == n and r["method"] == method and r["quantity"] in (
                    "reward_per_token", "kl_per_token"):
                pts.setdefault(r["point"], {})[r["quantity"]] = r["exact"]
        for v in pts.values():
            xc, yc = curve.get_data()
            assert abs(np.interp(v["kl_per_token"], xc, yc)
                       - v["reward_per_token"]) < 2e-3, (method, v)


def test_chain_bon_vs_rl_uses_the_perron_rates(chain_run):
    run_dir, spec = chain_run
    rows = store.read_results(run_dir)
    with jax.enable_x64(True):
        lm, reward = spec.build(CHAIN_LENGTHS[0])
        fig = plots.bon_vs_rl(rows, lm, reward)
    ax_r, _, ax_gap = fig.axes[:3]
    lam = scipy.optimize.brentq(lambda lam: _eig_rates(lam)[1] - 0.1, 1e-6, 20.0,
                                xtol=1e-13)
    x_star = _eig_rates(lam)[0]
    hline, = (ln for ln in ax_r.lines if ln.get_linestyle() == "--")
    assert hline.get_ydata()[0] == pytest.approx(x_star, rel=1e-7)
    pred, = (ln for ln in ax_gap.lines if ln.get_linestyle() == "--")
    xs, ys = pred.get_data()
    np.testing.assert_allclose(ys, np.log(xs) / (2 * lam * xs), rtol=1e-6)


def test_chain_plot_run_writes_every_figure_kind(chain_run):
    run_dir, _ = chain_run
    names = sorted(p.name for p in plots.plot_run(run_dir, formats=("png",)))
    assert names == sorted(["bon_vs_rl_sticky_delta0.1.png"]
                           + [f"{kind}_sticky_n{n}.png" for n in CHAIN_LENGTHS
                              for kind in ("reward_kl", "win_rate_kl")])
