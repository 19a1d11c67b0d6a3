# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Alignment with memory: Markov language models
#
# The asymptotics of Yang et al. (2024, [arXiv:2404.01730](https://arxiv.org/abs/2404.01730))
# are stated for memoryless models `P = p^{⊗n}`. Here the base model is a first-order
# Markov chain (`jaxalign.MarkovLM`): `y_1 ~ μ`, `y_t | y_{t−1} = a ~ P(a, ·)`, with a
# linear reward `R = Σ_t r(y_t)`. Everything is exact at finite `n` (THEORY §11):
#
# * the KL-optimal policy `φ_λ ∝ P e^{λR}` is a **time-inhomogeneous chain** found by
#   backward messages `h_n = 1`, `h_t = P_λ h_{t+1}` with `P_λ(a, b) = P(a, b) e^{λ r(b)}`,
#   and `log Z_n(λ) = log μ_λ P_λ^{n−1} 1` (`markov.tilt`, `markov.optimal_reward`);
# * the law of `R` is a DP over (state, reward) on the reward lattice
#   (`markov.reward_law`), so `exact.policy_law` makes every policy exact (best-of-N
#   included: `F^N`);
# * as `n → ∞` the Perron root `ρ(P_λ)` takes over: `Λ(λ) = log ρ(P_λ)` is the scaled
#   cumulant generating function, `I(x) = sup_λ [λx − Λ(λ)]` the rate function of
#   `R/n` (Gärtner–Ellis), and `x* = Λ'(λ_δ)` with `I(x*) = δ` the limit of the reward
#   per token at KL `nδ`.
#
# The example is the **sticky chain** `P = s I + (1 − s) 1 pᵀ` (stay with probability
# `s`, otherwise draw from `p`): `p` is stationary, so the base reward per token is the
# same for every `s`, and `s = 0` is the memoryless model. Memory makes long runs of the
# best token cheap: the alignment limits move. We check three claims:
#
# 1. **Best-of-N ≍ KL-optimal with memory**: with `N = ⌈e^{nδ}⌉`, `E_BoN[R]/n → x*` and
#    `KL(π_BoN‖P)/n → δ` (exact at every `n`, Monte Carlo token by token at small `n`),
#    and best-of-N approaches the exact frontier at its own KL.
# 2. **Large deviations through the Perron root**: `−(1/n) log P(R ≥ nx) → I(x)`, the
#    exact tail against the rate function.
# 3. **What memory costs a myopic sampler**: the look-ahead gap of the token-level tilt
#    and the gap between power sampling and temperature sampling vanish at `s = 0` and
#    are positive for every `0 < s < 1`.
#
# Each section asserts its claim, so running this notebook is a test. Set
# `JAXALIGN_NOTEBOOK_SMALL=1` for a tiny, fast run. Run as a script, it saves its
# figures as PNG files in `JAXALIGN_NOTEBOOK_OUT` (default `runs/notebooks`);
# `make notebooks` builds the executed `.ipynb`.

# %%
# %matplotlib inline
import math

import jax
import numpy as np
from matplotlib.figure import Figure

import jaxalign
from jaxalign import exact, markov, plots, policies, sample, theory

SMALL, show = plots.notebook("markov_memory")


def figure(ncols, width=4.8, height=3.9):
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig, axes


def lengths_axis(ax, lengths):
    """A log2 x axis labelled with the sequence lengths as plain numbers."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, labels=[f"{int(v)}" for v in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("sequence length n")


def legend_below(ax, ncol=1):
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=ncol, frameon=False)


C = plots.PALETTE
key = jax.random.key(12)
NUM = 512 if SMALL else 8192  # Monte Carlo draws per point
probs = np.array([0.4, 0.3, 0.2, 0.1])
reward = jaxalign.LinearReward([0.0, 1.0, 2.0, 3.0])
s = 0.5  # the memory strength of sections 1 and 2
# SMALL: the same two lengths everywhere (one compilation per length).
LENGTHS = [8, 16] if SMALL else [8, 16, 32, 64, 128, 256, 512, 1024]
chain1 = jaxalign.MarkovLM.sticky(probs, s, length=1)  # for the per-token limits
iid1 = jaxalign.MarkovLM.sticky(probs, 0.0, length=1)  # s = 0: memoryless
print("base reward per token E_p r =", float(probs @ np.asarray(reward.token_rewards)))

# %% [markdown]
# ## 1. Best-of-N against the KL-optimal policy as `n` grows
#
# `δ = 0.2`, `N = ⌈e^{nδ}⌉` candidates. Exact: `exact.policy_law(lm, reward,
# BestOfN(N))` (the law `F^N − F_−^N` of the maximum of `N` draws of `R`), its KL
# `KL(π_BoN‖P) = Σ_s π(s) log(π(s)/P(s))`, and the frontier
# `markov.optimal_reward(lm, reward, Δ) = max_{KL(Q‖P) ≤ Δ} E_Q R` at the KL of
# best-of-N and at `nδ`. The limit `x* = markov.limit_reward_per_token(lm, reward, δ)`
# solves `I(x*) = δ`. Monte Carlo: best-of-N drawn token by token
# (`sample.best_of_n` on the chain, every candidate a sequence of the chain) at small
# `n`, and at the law level (`sample.policy(level="law")`, any `N`) at every `n`;
# error bars are 95% intervals.

# %%
delta = 0.2
x_star = float(markov.limit_reward_per_token(chain1, reward, delta))
x_iid = float(markov.limit_reward_per_token(iid1, reward, delta))
assert abs(float(markov.rate_function(chain1, reward, x_star)) - delta) < 1e-9
print(f"x* = {x_star:.4f} with memory s = {s}, {x_iid:.4f} memoryless")

rows = []
for i, n in enumerate(LENGTHS):
    lm = jaxalign.MarkovLM.sticky(probs, s, length=n)
    num = math.ceil(math.exp(n * delta))
    bon = policies.BestOfN(log_num_candidates=math.log(num))
    law = exact.policy_law(lm, reward, bon)
    row = dict(n=n, num=num, reward=float(law.expected_reward) / n,
               kl=float(law.kl) / n,
               bound=float(theory.best_of_n_kl_bound(num)) / n,
               frontier=float(markov.optimal_reward(lm, reward, law.kl)) / n,
               tilt=float(markov.optimal_reward(lm, reward, n * delta)) / n,
               sd=math.sqrt(float(law.variance)) / n)
    if n <= (LENGTHS[0] if SMALL else 16):  # token level: N n tokens per draw
        draws = np.asarray(sample.best_of_n(jax.random.fold_in(key, i), lm, reward,
                                            num, NUM).reward) / n
        row["token_mc"] = (draws.mean(), draws.std(ddof=1) / math.sqrt(NUM))
    if not SMALL:
        draws = np.asarray(sample.policy(jax.random.fold_in(key, 100 + i), lm, reward,
                                         bon, NUM, level="law")) / n
        row["law_mc"] = (draws.mean(), draws.std(ddof=1) / math.sqrt(NUM))
    rows.append(row)
    print(f"n={n:5d} N={num:9.3g}  E_BoN/n={row['reward']:.4f}  frontier at its KL "
          f"{row['frontier']:.4f}  KL/n={row['kl']:.4f}")

ns = np.array([r["n"] for r in rows], float)
get = lambda name: np.array([r[name] for r in rows])  # noqa: E731
for r in rows:
    for mc in ("token_mc", "law_mc"):
        if mc in r:
            z = (r[mc][0] - r["reward"]) / r[mc][1]
            assert abs(z) < 5, (r["n"], mc, z)
assert np.all(np.diff(get("reward")) > 0) and np.all(get("reward") < x_star)
assert np.all(get("reward") <= get("frontier") + 1e-9)  # nothing beats the frontier
assert np.all(get("kl") <= get("bound") + 1e-12)  # KL(BoN) <= log N - (N-1)/N
assert np.all(np.diff(np.abs(get("kl") - delta)) < 0)  # KL/n -> delta
assert np.all(np.diff(x_star - get("reward")) < 0)  # E_BoN/n -> x*
if not SMALL:  # BoN -> the frontier at its own KL (beyond the first lengths)
    assert np.all(np.diff((get("frontier") - get("reward"))[ns >= 16]) < 0)

fig, (ax_r, ax_kl, ax_gap) = figure(3, width=4.7, height=5.6)
ax_r.plot(ns, get("reward"), "-D", color=C["vermillion"], ms=4,
          label="best-of-N, exact")
for mc, marker, label in (("token_mc", "o", "best-of-N, token-level MC"),
                          ("law_mc", "s", "best-of-N, law-level MC")):
    pts = [(r["n"], *r[mc]) for r in rows if mc in r]
    if pts:
        x, m, se = np.array(pts).T
        ax_r.errorbar(x, m, yerr=1.96 * se, fmt=marker, mfc="none", color=C["black"],
                      capsize=3, ms=7, label=label + " (95% CI)")
ax_r.plot(ns, get("frontier"), "--", color=C["green"],
          label="frontier at BoN's KL (exact)")
ax_r.plot(ns, get("tilt"), "-", color=C["blue"], label=r"KL-optimal at KL $n\delta$")
ax_r.axhline(x_star, color=C["black"], ls="--", lw=1,
             label=rf"$x^*$ = {x_star:.3f} (Perron)")
ax_r.axhline(x_iid, color="grey", ls=":", lw=1.2,
             label=rf"$x^*$ memoryless ($s$=0) = {x_iid:.3f}")
lengths_axis(ax_r, ns)
ax_r.set_ylabel(r"reward per token $E[R]/n$")
ax_r.set_title(rf"(a) reward, $N=\lceil e^{{n\delta}}\rceil$, $\delta$={delta}",
               fontsize="medium")
legend_below(ax_r)

# (The bound is drawn wide and pale: it nearly coincides with the exact KL.)
ax_kl.plot(ns, get("bound"), "-", color=C["orange"], lw=5, alpha=0.35,
           label=r"bound $(\log N-(N-1)/N)/n$")
ax_kl.plot(ns, get("kl"), "-D", color=C["vermillion"], ms=4,
           label=r"$KL(\pi_{BoN}\|P)/n$, exact")
ax_kl.axhline(delta, color=C["black"], ls="--", lw=1, label=rf"$\delta$ = {delta}")
lengths_axis(ax_kl, ns)
ax_kl.set_ylabel("KL per token (nats)")
ax_kl.set_title("(b) KL of best-of-N", fontsize="medium")
legend_below(ax_kl)

ax_gap.loglog(ns, x_star - get("reward"), "-D", color=C["vermillion"], ms=4,
              label=r"$x^* - E_{BoN}[R]/n$")
ax_gap.loglog(ns, get("frontier") - get("reward"), "-s", color=C["green"], ms=4,
              label="frontier at its KL − BoN, per token")
ax_gap.loglog(ns, x_star - get("tilt"), "-o", color=C["blue"], ms=4,
              label=r"$x^* - $ KL-optimal at $n\delta$, per token")
lengths_axis(ax_gap, ns)
ax_gap.set_ylabel("gap per token")
ax_gap.set_title("(c) convergence", fontsize="medium")
legend_below(ax_gap)
fig.suptitle(f"Best-of-N vs the KL-optimal policy on a sticky chain (K = 4, s = {s})",
             fontsize="medium")
show(fig, "bon_vs_kl_optimal")

# %% [markdown]
# ## 2. Large deviations through the Perron root
#
# `I(x) = sup_λ [λx − Λ(λ)]` with `Λ(λ) = log ρ(P_λ)` (`markov.rate_function`: the KL
# rate of the twisted chain `Q_λ`, a sum of non-negative terms). The exact tail
# `P(R ≥ nx)` comes from the law of `R` (`markov.reward_law` then `exact.log_tail`,
# in log space, so deep tails keep their relative accuracy). `−(1/n) log P(R ≥ nx)`
# approaches `I(x)` like `O(log n / n)`. The memoryless rates (`s = 0`, grey) are much
# larger: memory fattens the tails, which is why `x*` moved up in section 1.

# %%
xs = np.array([1.5, 2.0])
rate = np.array([float(markov.rate_function(chain1, reward, x)) for x in xs])
rate_iid = np.array([float(markov.rate_function(iid1, reward, x)) for x in xs])
log_tail = []
for n in LENGTHS:
    law = markov.reward_law(jaxalign.MarkovLM.sticky(probs, s, length=n), reward)
    log_tail.append(np.asarray(exact.log_tail(law, n * xs)))
log_tail = np.array(log_tail)
exponent = -log_tail / ns[:, None]
assert np.all(rate < rate_iid)  # memory fattens the tails
excess = np.abs(exponent - rate)
assert np.all(np.diff(excess, axis=0) < 0), excess  # -> I(x)
if not SMALL:
    assert np.all(excess[-1] < 0.01)

fig = plots.large_deviations(ns, xs, rate, log_tail)
ax = fig.axes[0]
for j, r in enumerate(rate_iid):
    ax.axhline(r, color="grey", ls=(0, (1, 3)), lw=1.2,
               label="memoryless rate ($s$=0)" if j == 0 else None)
lengths_axis(ax, ns)
ax.set_ylabel(r"$-\log P(R \geq nx)\;/\;n$  (nats)")
ax.set_title(rf"Exact tail exponent vs $I(x)$ from the Perron root (s = {s})",
             fontsize="medium")
ax.legend(fontsize="small")
show(fig, "large_deviations")

# %% [markdown]
# ## 3. What memory costs a myopic sampler
#
# **Look-ahead.** The token-level tilt `φ̃_λ(y_t = b | y_{t−1} = a) ∝ P(a, b) e^{λ r(b)}`
# (`markov.myopic_tilt`) ignores the future; the optimal policy weights the step by
# `h_t(b)`, the value of what follows. `markov.lookahead_gap` compares them at the same
# KL: the reward shortfall `max_{KL(Q‖P) ≤ KL(φ̃‖P)} E_Q R − E_φ̃ R ≥ 0` and
# `KL(φ_λ‖φ̃_λ)`. **Power vs temperature.** Sampling the sequence distribution
# `P(y)^α / Σ P^α` (`markov.power_chain`) is not sampling each token at temperature
# `1/α` (`markov.temperature_chain`); their KL per token measures the difference. Both
# gaps vanish for the memoryless model (`s = 0`) and appear as soon as there is memory;
# the power-vs-temperature gap (like `KL(φ_λ‖φ̃_λ)`) peaks at intermediate `s` and
# falls again as `s → 1`, where after the first token there is little left to choose,
# while the reward shortfall keeps growing.

# %%
n = LENGTHS[-1] if SMALL else 64
lam, alphas = 1.0, (2.0, 4.0)
ss = np.linspace(0.0, 0.9, 4) if SMALL else np.linspace(0.0, 0.95, 20)
shortfall, kl_myopic, power_gap = [], [], []
for s_ in ss:
    lm = jaxalign.MarkovLM.sticky(probs, float(s_), length=n)
    gap = markov.lookahead_gap(lm, reward, lam)
    shortfall.append(float(gap.reward_shortfall) / n)
    kl_myopic.append(float(gap.kl_to_myopic) / n)
    power_gap.append([float(markov.chain_kl(markov.power_chain(lm, a),
                                            markov.temperature_chain(lm, a))) / n
                      for a in alphas])
shortfall, kl_myopic, power_gap = map(np.array, (shortfall, kl_myopic, power_gap))
assert abs(shortfall[0]) < 1e-9 and kl_myopic[0] < 1e-12 and np.all(power_gap[0] < 1e-12)
assert np.all(shortfall[1:] > 0) and np.all(kl_myopic[1:] > 0)
assert np.all(power_gap[1:] > 0)

fig, (ax_l, ax_p) = figure(2, width=5.2)
ax_l.plot(ss, shortfall, "-o", color=C["vermillion"], ms=4,
          label="reward shortfall at the same KL")
ax_l.plot(ss, kl_myopic, "-s", color=C["blue"], ms=4,
          label=r"$KL(\varphi_\lambda\|\tilde\varphi_\lambda)$ (nats)")
ax_l.set_xlabel("memory strength s (stay probability)")
ax_l.set_ylabel("per token")
ax_l.set_title(rf"(a) look-ahead gap of the token-level tilt, $\lambda$={lam}, n={n}",
               fontsize="medium")
ax_l.legend(fontsize="small")
for j, a in enumerate(alphas):
    ax_p.plot(ss, power_gap[:, j], "-o", color=plots.PALETTE[("green", "purple")[j]],
              ms=4, label=rf"$\alpha$ = {a:g}")
ax_p.set_xlabel("memory strength s (stay probability)")
ax_p.set_ylabel("KL(power ‖ temperature) per token (nats)")
ax_p.set_title(rf"(b) power $P^\alpha$ vs temperature $1/\alpha$, n={n}",
               fontsize="medium")
ax_p.legend(fontsize="small", title="exponent")
fig.suptitle("Memory makes token-level (myopic) samplers suboptimal (K = 4)",
             fontsize="medium")
show(fig, "myopic_gaps")
