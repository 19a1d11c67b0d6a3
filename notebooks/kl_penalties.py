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
# # Which KL does your trainer optimise? (issue 13)
#
# An RL trainer penalises `KL(q_θ‖p)` with a *sampled* estimate. With the log-ratio
# `ℓ_t = log q(y_t|y_{t−1}) − log p(y_t|y_{t−1})`, `ℓ = Σ_t ℓ_t` and the scores
# `s_t = ∇_θ log q(y_t|y_{t−1})`, the estimators of Schulman are
# `k1 = ℓ`, `k2 = ℓ²/2`, `k3 = e^{−ℓ} − 1 + ℓ`, and an implementation picks
#
# - the **level**: per token (`Σ_t k(ℓ_t)`) or per sequence (`k(ℓ)`);
# - the **placement**: in the reward (score function `k · Σ_t s_t`, or reward-to-go
#   `Σ_t s_t Σ_{u≥t} k(ℓ_u)`) or as a loss (`∇_θ k` with the samples fixed);
# - the **weighting**: on-policy, importance ratio `w = q_θ/q_old`, or clipped ratio.
#
# `jaxalign.kl_gradients` gives the *exact* expected gradient `E[g]` and per-sample
# covariance of every cell by forward recursions over the chain (no sampling), so each
# question below gets exact numbers:
#
# 1. per-token `k2` as a loss against the full gradient as the memory of the chain
#    grows (it drops `Σ_t E[s_t Σ_{u>t} ℓ_u]`, the effect of θ on later states);
# 2. `k3` as a loss gives the gradient of the *forward* KL `KL(p‖q)`;
# 3. `k1` as a loss has zero expected gradient;
# 4. off-policy ratio corrections;
# 5. the variance blow-up of sequence-level `k3` with `n`;
# 6. RL with memory: where each choice converges, against the exact finite-n frontier.
#
# Every claim is asserted, so running the notebook is a test.
# `JAXALIGN_NOTEBOOK_SMALL=1` runs a tiny version in seconds; as a script it saves its
# figures as PNG files in `JAXALIGN_NOTEBOOK_OUT` (default `runs/notebooks`).

# %%
# %matplotlib inline

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import jaxalign
from jaxalign import kl_gradients as kg
from jaxalign import markov, plots, rl

SMALL, show = plots.notebook("kl_penalties")


probs = jnp.array([0.5, 0.3, 0.2])
reward = jaxalign.LinearReward([0.0, 0.5, 1.0])
N = 4  # one chain length for sections 1-4: one compilation of the whole grid
ON_POLICY = [i for i in kg.GRID if i.weighting == "on_policy"]


def policy(p, lam=1.0):
    """q: the token-level (myopic) tilt of the chain p, as (init, trans) logits."""
    q = markov.myopic_tilt(p, reward, lam)
    return q.log_init, q.log_trans


def row(s, name):
    return [i.name for i in s.implementations].index(name)


# %% [markdown]
# ## 1. The whole grid at one point
#
# A sticky chain `P = sI + (1 − s)1pᵀ` with `s = 0.6`, `n = 4`, and `q` its token-level
# tilt. Each bar is exact: the cosine of `E[g]` with `∇KL(q‖p)`, the relative bias
# `‖E g − ∇KL(q‖p)‖/‖∇KL(q‖p)‖`, and the per-sample variance `tr Cov[g]`. The colour
# says which divergence `E[g]` is the gradient of. The bottom panel is section 5.

# %%
p = jaxalign.MarkovLM.sticky(probs, 0.6, length=N)
params = policy(p)
s = kg.summary(params, p)  # all 45 rows (the ratio rows: section 4)
fig = plots.kl_penalty_gradients(kg.summary(params, p, implementations=ON_POLICY),
                                 kg.value_moments(params, p))
show(fig, "grid")
for name in ("k1/reward/token/on_policy", "k1/reward_to_go/token/on_policy",
             "k2/loss/sequence/on_policy"):
    assert s.relative_bias[row(s, name)] < 1e-10, name  # unbiased for ∇KL(q‖p)

# %% [markdown]
# ## 2. Per-token k2 as a loss, as memory grows
#
# `∇_θ Σ_t ℓ_t²/2 = Σ_t ℓ_t s_t`, whose mean is `E[Σ_t ℓ_t s_t]`, while
# `∇KL(q‖p) = E[Σ_t s_t Σ_{u≥t} ℓ_u]`: the per-token loss drops the terms
# `u > t`. Without memory they vanish (`y_u` is independent of `y_t`); with a sticky
# chain they do not. We sweep the stickiness `s` of both `p` and its tilt `q`.

# %%
stick = np.linspace(0.0, 0.9, 4 if SMALL else 10)
picks = ["k2/loss/token/on_policy", "k2/loss/sequence/on_policy",
         "k3/loss/token/on_policy"]
cos, bias = [], []
for st in stick:
    ps = jaxalign.MarkovLM.sticky(probs, float(st), length=N)
    ss = kg.summary(policy(ps), ps, implementations=ON_POLICY)  # (same program)
    cos.append([float(ss.cosine[row(ss, n)]) for n in picks])
    bias.append([float(ss.relative_bias[row(ss, n)]) for n in picks])
cos, bias = np.array(cos), np.array(bias)
print(" s     cos(k2 token loss)  rel. bias   (k2 sequence loss: rel. bias)")
for st, c, b in zip(stick, cos, bias, strict=True):
    print(f"{st:4.2f}  {c[0]:18.6f}  {b[0]:9.6f}   {b[1]:.2e}")
assert bias[0, 0] < 1e-10  # no memory: per-token k2 is the true gradient
assert np.all(bias[1:, 0] > 1e-2)  # with memory it is not (not monotone in s)
assert np.all(bias[:, 1] < 1e-10)  # the sequence-level k2 loss never is biased

fig = Figure(figsize=(9, 3.4), layout="constrained")
ax1, ax2 = fig.subplots(1, 2)
labels = ["k2 loss, per token", "k2 loss, sequence", "k3 loss, per token"]
for j, lab in enumerate(labels):
    ax1.plot(stick, cos[:, j], "o-", label=lab)
    ax2.plot(stick, bias[:, j], "o-", label=lab)
ax1.set_xlabel("stickiness s of p (and q)")
ax1.set_ylabel("cosine with ∇KL(q‖p)")
ax2.set_xlabel("stickiness s of p (and q)")
ax2.set_ylabel("relative bias")
ax1.set_title("direction")
ax2.set_title("‖E g − ∇KL(q‖p)‖ / ‖∇KL(q‖p)‖")
for ax in (ax1, ax2):
    ax.grid(True, alpha=0.3)
ax2.legend(fontsize="small")
show(fig, "k2_memory")

# %% [markdown]
# ## 3. k3 as a loss is the forward-KL gradient; 4. k1 as a loss is nothing
#
# `∇_θ k3(ℓ) = (1 − e^{−ℓ}) ∇ℓ` and `E_q[e^{−ℓ} ∇ℓ] = Σ_y p(y) ∇log q(y) =
# −∇KL(p‖q)`, `E_q[∇ℓ] = E_q[∇log q] = 0`: sequence-level `k3` as a loss gives
# `∇KL(p‖q)`, and `k1` as a loss gives `0` at any level (its per-sample gradient is
# the score, pure noise).

# %%
g_pq = np.asarray(s.grad_kl_pq)
k3 = np.asarray(s.mean[row(s, "k3/loss/sequence/on_policy")])
print("|E g(k3 loss, sequence) - grad KL(p||q)| =", np.abs(k3 - g_pq).max())
print("cos(grad KL(p||q), grad KL(q||p)) =",
      float(g_pq @ s.grad_kl_qp / np.linalg.norm(g_pq) / np.linalg.norm(s.grad_kl_qp)))
assert np.allclose(k3, g_pq, atol=1e-12)
for name in ("k1/loss/token/on_policy", "k1/loss/sequence/on_policy"):
    j = row(s, name)
    print(f"{name}: |E g| = {np.abs(np.asarray(s.mean[j])).max():.1e}, "
          f"tr Cov g = {float(s.variance[j]):.3f}")
    assert np.abs(np.asarray(s.mean[j])).max() < 1e-12 and s.variance[j] > 0.1

# %% [markdown]
# ## 4. Off-policy ratio corrections
#
# Samples from `q_old`, the penalty weighted by `w = q_θ/q_old` (per token at the
# token level). At `θ = θ_old` the ratio only changes the *derivative*:
# `∇(w k) = (k + k′) s`, so `w·k3` as a loss gives `(1 − e^{−ℓ} + e^{−ℓ} − 1 + ℓ) s =
# ℓ s`: the per-token `k2` loss (biased for chains), and `w·k2` the gradient of no
# divergence. With the whole-sequence ratio, `E_old[∇(w k(ℓ_θ))] = ∇E_θ[k(ℓ_θ)]` at
# *any* θ_old (exact importance sampling): sequence-level `w·k1` stays unbiased as
# `θ_old` moves away, the per-token ratios do not.

# %%
names = ["k1/loss/sequence/ratio", "k3/loss/sequence/ratio", "k1/loss/token/ratio",
         "k3/loss/token/ratio", "k2/loss/token/ratio"]
# (every on-policy row too: one compiled program for all the summaries here)
rows_ratio = [kg.Implementation(*n.split("/")) for n in names] + ON_POLICY
assert np.allclose(s.mean[row(s, "k3/loss/token/ratio")],
                   s.mean[row(s, "k2/loss/token/on_policy")], atol=1e-12)
shift = (jnp.array([0.4, -0.4, 0.0]), jnp.array([[0.3, 0.0, -0.3], [0.0, 0.3, 0.0],
                                                  [-0.3, 0.0, 0.3]]))
print("distance  " + "  ".join(f"{n:>24}" for n in names))
for t in (0.0, 0.5, 1.0):
    old = tuple(a + t * b for a, b in zip(params, shift, strict=True))
    so = kg.summary(params, p, old_params=old, implementations=rows_ratio)
    print(f"{t:8.2f}  " + "  ".join(f"{float(b):24.6f}"
                                    for b in so.relative_bias[:len(names)]))
    assert so.relative_bias[0] < 1e-10  # exact importance sampling
    if t > 0:
        assert so.relative_bias[2] > 1e-3  # per-token ratios: biased off θ_old

# %% [markdown]
# ## 5. The variance of sequence-level k3 blows up with n
#
# Token-summed values add `n` terms: their variance grows about linearly. The
# sequence-level `k3 = e^{−ℓ} − 1 + ℓ` has `E_q e^{−2ℓ} = Σ_y p(y)²/q(y) =
# (Σ_x p(x)²/q(x))^n` for memoryless models: exponential growth at rate
# `log Σ p²/q` per token. (Exact values by the forward recursion of
# `kl_gradients.value_moments`, every prefix length in one pass; `k1` is linear, so
# its two lines coincide.)

# %%
n_long = 16 if SMALL else 64
pm = jaxalign.MemorylessLM.from_probs(probs, length=n_long)
theta_m = jnp.log(jnp.array([0.2, 0.3, 0.5]))
vm = kg.value_moments(theta_m, pm)
qm = np.array([0.2, 0.3, 0.5])
rate = np.log(np.sum(np.asarray(probs) ** 2 / qm))
seq_k3 = np.asarray(vm.sequence_variance[2])
tok_k3 = np.asarray(vm.token_variance[2])
slope = np.log(seq_k3[-1] / seq_k3[-2])
print(f"rate log sum p^2/q = {rate:.4f}; slope of log Var k3(l) at n = {n_long}: "
      f"{slope:.4f}")
print(f"n = {n_long}: Var k3 per token summed = {tok_k3[-1]:.3g}, "
      f"sequence = {seq_k3[-1]:.3g}")
assert abs(slope - rate) < 0.05 * rate and seq_k3[-1] > 100 * tok_k3[-1]
assert np.allclose(np.diff(tok_k3), tok_k3[0])  # i.i.d. tokens: exactly linear

fig = Figure(figsize=(6, 3.6), layout="constrained")
ax = fig.subplots()
for e, est in enumerate(("k1", "k2", "k3")):
    ax.plot(np.asarray(vm.length), np.asarray(vm.token_variance[e]), "-",
            color=plots.PALETTE[("blue", "vermillion", "green")[e]],
            label=f"{est}, Σ_t k(ℓ_t)")
    ax.plot(np.asarray(vm.length), np.asarray(vm.sequence_variance[e]), "--",
            color=plots.PALETTE[("blue", "vermillion", "green")[e]],
            label=f"{est}, k(ℓ)")
ax.plot(np.asarray(vm.length), np.exp(rate * np.asarray(vm.length)), ":",
        color="black", label="(Σ p²/q)^n")
ax.set_yscale("log")
ax.set_xlabel("sequence length n")
ax.set_ylabel("Var_q of the KL value")
ax.set_title("memoryless p, q = (0.2, 0.3, 0.5)")
ax.grid(True, alpha=0.3)
ax.legend(fontsize="small", ncols=2)
show(fig, "value_variance")

# %% [markdown]
# ## 6. RL with memory: where each choice converges
#
# `jaxalign.rl.train` with a `MarkovLM` trains a homogeneous chain `θ = (init, trans)`
# to maximise `E_Q[R] − β KL(Q‖P)` with the penalty any cell of the grid. The exact
# mode follows `∇E_Q[R] − β E[g]` (the cell's exact expected gradient) to its
# **stationary point**; REINFORCE samples. The trajectories are exact (KL by
# `markov.chain_kl`, reward by `markov.chain_expected_reward`). The frontier is the
# exact finite-n `markov.optimal_reward` (the tilt `φ_λ`, time-inhomogeneous: a
# homogeneous chain reaches it only for `n ≤ 2`, so even the true gradient stops a
# little below it for `n = 4`: the *class gap*, closed below by a time-varying
# policy). The cells with a biased gradient stop at other points, lower in the
# objective.

# %%
p = jaxalign.MarkovLM.sticky(probs, 0.6, length=N)
beta = 0.5
cells = {"k1 reward-to-go (true ∇)": ("k1", "reward_to_go", "token"),
         "k2 loss, per token": ("k2", "loss", "token"),
         "k3 loss, per token (partial ∇KL(p‖q))": ("k3", "loss", "token"),
         "k3 loss, sequence (∇KL(p‖q))": ("k3", "loss", "sequence")}
if SMALL:  # (one compilation less)
    del cells["k3 loss, sequence (∇KL(p‖q))"]
steps = 600 if SMALL else 2000
runs = {}
for label, (est, mode, level) in cells.items():
    runs[label] = rl.train(jax.random.key(0), p, reward, beta, algorithm="exact",
                           kl_estimator=est, kl_mode=mode, kl_level=level,
                           optimizer_fn=optax.sgd, learning_rate=0.5, num_steps=steps)
# REINFORCE (leave-one-out baseline, Adam) with the biased per-token k2 loss, 16
# seeds: it lands on that cell's exact stationary point, not on the true one.
sampled = None if SMALL else rl.train_sweep(
    jax.random.key(1), p, reward, jnp.array([beta]), num_seeds=16,
    algorithm="reinforce", kl_estimator="k2", kl_mode="loss", kl_level="token",
    learning_rate=0.02, num_steps=1000, batch_size=64)


def true_gradient_run(chain, time_varying):
    """Exact ascent with the true gradient from P's own tables, homogeneous
    (K, K) or time-varying (n − 1, K, K) transition logits."""
    trans = chain.log_trans
    if time_varying:
        trans = jnp.stack([trans] * (chain.length - 1))
    return rl.train(jax.random.key(0), chain, reward, beta, algorithm="exact",
                    kl_estimator="k1", kl_mode="reward_to_go",
                    init_logits=(chain.log_init, trans), optimizer_fn=optax.adam,
                    learning_rate=0.1, num_steps=steps)


def frontier_gap(chain, res):
    return float(markov.optimal_reward(chain, reward, float(res.kl[-1]))) - float(
        res.reward[-1])


varying = true_gradient_run(p, True)
tilt = markov.tilt_summary(p, reward, 1 / beta)
j_opt = float(tilt.mean - beta * tilt.kl)
print(f"tilt (optimum over all laws): KL = {float(tilt.kl):.5f}, "
      f"E R = {float(tilt.mean):.5f}, J = {j_opt:.5f}")
print(f"{'penalty':40} {'KL':>8} {'E R':>8} {'frontier gap':>13} {'J':>8} "
      f"{'J gap':>8}")
final = {}
for label, res in runs.items():
    kl, rew = float(res.kl[-1]), float(res.reward[-1])
    gap = float(markov.optimal_reward(p, reward, kl)) - rew
    final[label] = (kl, rew, gap, rew - beta * kl)
    print(f"{label:40} {kl:8.5f} {rew:8.5f} {gap:13.2e} {rew - beta * kl:8.5f} "
          f"{j_opt - (rew - beta * kl):8.5f}")
    assert gap >= -1e-9  # every trained policy is on or below the frontier
true = final["k1 reward-to-go (true ∇)"]
for label, (_, _, gap, j) in final.items():
    if label != "k1 reward-to-go (true ∇)":
        assert j < true[3] - 1e-4 and gap > true[2], label  # a worse stationary point
if sampled is not None:
    kl_s = np.asarray(sampled.kl[0, :, -1])
    rew_s = np.asarray(sampled.reward[0, :, -1])
    z = [(kl_s.mean() - final["k2 loss, per token"][0])
         / (kl_s.std(ddof=1) / np.sqrt(kl_s.size)),
         (rew_s.mean() - final["k2 loss, per token"][1])
         / (rew_s.std(ddof=1) / np.sqrt(rew_s.size))]
    print(f"REINFORCE, k2 loss per token ({kl_s.size} seeds): KL = {kl_s.mean():.4f} "
          f"± {kl_s.std(ddof=1) / np.sqrt(kl_s.size):.4f}, E R = {rew_s.mean():.4f} "
          f"± {rew_s.std(ddof=1) / np.sqrt(rew_s.size):.4f}; z against the exact "
          f"stationary point: {z[0]:.2f}, {z[1]:.2f}")
    assert max(abs(v) for v in z) < 5

lams = 6.0 * np.linspace(0.0, 1.0, 48) ** 1.5  # (denser at small λ: KL ~ λ²)
front_kl = [float(markov.kl(p, reward, lam)) for lam in lams]
front_r = [float(markov.expected_reward(p, reward, lam)) for lam in lams]
fig = Figure(figsize=(7, 4.4), layout="constrained")
ax = fig.subplots()
ax.plot(front_kl, front_r, "-", color="black", label="frontier (exact tilt)")
ax.plot([float(tilt.kl)], [float(tilt.mean)], "*", ms=12, color="black",
        label=f"tilt at λ = 1/β = {1 / beta:g}")
for i, (label, res) in enumerate(runs.items()):
    colour = plots.PALETTE[("green", "sky_blue", "orange", "vermillion")[i]]
    ax.plot(np.asarray(res.kl), np.asarray(res.reward), "-", color=colour, lw=1.2,
            label=f"exact: {label}")
    ax.plot([float(res.kl[-1])], [float(res.reward[-1])], "o", color=colour)
if sampled is not None:
    ax.plot(kl_s, rew_s, "x", color=plots.PALETTE["blue"],
            label="REINFORCE, k2 loss per token (seeds)")
ax.plot(np.asarray(varying.kl), np.asarray(varying.reward), "--",
        color=plots.PALETTE["black"], lw=1.2,
        label="exact: k1 reward-to-go, time-varying policy")
ax.set_xlim(0, 1.6 * max(v[0] for v in final.values()))
ax.set_ylim(float(front_r[0]) - 0.05, 1.02 * max(front_r[-1], float(tilt.mean)))
ax.set_xlabel("KL(Q‖P)  [nats, sequence]")
ax.set_ylabel("E_Q[R]")
ax.set_title(f"sticky chain s = 0.6, n = {N}, β = {beta:g}: training trajectories")
ax.grid(True, alpha=0.3)
ax.legend(fontsize="small", loc="lower right")
show(fig, "rl_memory")

# %% [markdown]
# ### Closing the class gap: time-varying policies
#
# With `trans_logits` of shape `(n − 1, K, K)` (one transition matrix per step, the
# layout of a time-inhomogeneous `MarkovLM`) the policy class holds the tilt, so the
# true gradient (k1 with reward-to-go) lands on the frontier for every `n`; the
# homogeneous chain stops below it from `n = 3` on. (Every cell of
# `kl_gradients` takes either form.)

# %%
print(f"{'n':>3} {'frontier gap: homogeneous':>26} {'time-varying':>13}")
for n in [N] if SMALL else [2, 3, 4, 6]:
    chain = jaxalign.MarkovLM.sticky(probs, 0.6, length=n)
    hom = final["k1 reward-to-go (true ∇)"][2] if n == N else frontier_gap(
        chain, true_gradient_run(chain, False))
    var = frontier_gap(p, varying) if n == N else frontier_gap(
        chain, true_gradient_run(chain, True))
    print(f"{n:3d} {hom:26.2e} {var:13.2e}")
    assert abs(var) < 1e-6  # the tilt is reachable: on the frontier
    assert hom > 1e-3 if n >= 3 else abs(hom) < 1e-6  # the class gap
