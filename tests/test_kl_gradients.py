"""kl_gradients: every exact mean and covariance against brute-force enumeration of
all K^n sequences (NumPy scores and estimators, independent of the module's
recursions), the identities of issue 13, the exact growth of the values' variance,
Monte Carlo z-tests (autodiff of the surrogate losses), bad input."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxalign
from jaxalign import kl_gradients as kg

K, N = 3, 4
P = np.array([0.5, 0.3, 0.2])
THETA = np.array([0.3, -0.2, 0.5])
THETA_OLD = np.array([0.0, 0.2, 0.3])
MU = np.array([0.5, 0.3, 0.2])
TRANS = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.5, 0.25, 0.25]])
A = np.array([0.2, -0.1, 0.0])
B = np.array([[0.5, 0.0, -0.5], [0.0, 1.0, 0.2], [-0.3, 0.4, 0.1]])
A_OLD = A + np.array([0.3, -0.3, 0.1])
B_OLD = B + (np.arange(9.0).reshape(3, 3) - 4) / 8
CLIP = 0.2
# a time-varying policy: one transition matrix of logits per step (N - 1, K, K)
B_VAR = np.stack([B, 0.8 * B.T - 0.1, B[::-1] + 0.3])
B_VAR_OLD = B_VAR + np.stack([c * (np.arange(9.0).reshape(3, 3) - 4) / 8
                              for c in (1.0, -0.7, 0.5)])
# Off θ_old the sequence-level clip has no exact form (its own test below).
OFF_GRID = tuple(i for i in kg.GRID
                 if not (i.level == "sequence" and i.weighting == "clipped"))


# ---------------------------------------------------------------- enumeration


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _k(est, x):
    return {"k1": x, "k2": 0.5 * x**2, "k3": np.expm1(-x) + x}[est]


def _dk(est, x):
    return {"k1": np.ones_like(x), "k2": x, "k3": -np.expm1(-x)}[est]


class Enum:
    """All K^n sequences with per-token log q_θ, log q_old, log p and scores
    ``∇_θ log q(y_t | y_{t-1})`` written out by hand (softmax logits)."""

    def __init__(self, flat, old, lp0, lp, n, markov):
        self.n, self.markov = n, markov
        self.y = y = np.array(list(itertools.product(range(K), repeat=n)))
        steps = [lp if lp.ndim == 2 else lp[t] for t in range(n - 1)]
        self.lp = np.stack([lp0[y[:, 0]]]
                           + [steps[t][y[:, t], y[:, t + 1]] for t in range(n - 1)], 1)
        self.lth, self.s = self._policy(flat)
        self.lold, _ = self._policy(old)

    def _policy(self, flat):
        y, n = self.y, self.n
        if not self.markov:
            pi = _softmax(flat)
            return np.log(pi)[y], np.eye(K)[y] - pi
        # homogeneous (K + K² logits) or time-varying (K + (n - 1) K²): step t
        # (t = 1..n-1) reads slice t - 1 and its score fills that slice's block
        pa = _softmax(flat[:K])
        pb = _softmax(flat[K:].reshape(-1, K, K))
        lq = np.zeros(y.shape)
        s = np.zeros(y.shape + (flat.size,))
        lq[:, 0] = np.log(pa[y[:, 0]])
        s[:, 0, :K] = np.eye(K)[y[:, 0]] - pa
        rows = np.arange(len(y))
        for t in range(1, n):
            u, v = y[:, t - 1], y[:, t]
            j = t - 1 if len(pb) > 1 else 0
            lq[:, t] = np.log(pb[j, u, v])
            block = np.zeros((len(y), K, K))
            block[rows, u, :] = np.eye(K)[v] - pb[j, u]
            s[:, t, K + j * K * K:K + (j + 1) * K * K] += block.reshape(len(y), -1)
        return lq, s

    @property
    def q(self):
        return np.exp(self.lth.sum(1))

    @property
    def p(self):
        return np.exp(self.lp.sum(1))

    def estimate(self, est, place, level, weighting, clip=CLIP, form="clip"):
        """``g(y)`` for every sequence, from the definitions: the penalty term
        ``x`` times the weight, ``(ι w, w̃)`` the factors of ``x'`` and of ``k'``."""
        on = weighting == "on_policy"
        law = self.lth if on else self.lold
        s = self.s
        score = s.sum(1)

        def weights(w, x):
            if weighting != "clipped":
                return w, w
            bound = np.clip(w, 1 - clip, 1 + clip)
            if form == "min":  # PPO: max(w x, clip(w) x), the w branch on ties
                keep = w * x >= bound * x
            else:
                keep = (w > 1 - clip) & (w < 1 + clip)
            return keep * w, np.where(keep, w, bound)

        if level == "token":
            w = np.exp(self.lth - law)
            if place != "loss":
                kt = _k(est, law - self.lp)
                ret = (np.cumsum(kt[:, ::-1], 1)[:, ::-1] if place == "reward_to_go"
                       else np.repeat(kt.sum(1, keepdims=True), self.n, 1))
                coef = ret if on else weights(w, ret)[0] * ret
            else:
                x = self.lth - self.lp
                dw, cut = weights(w, _k(est, x))
                coef = _dk(est, x) if on else dw * _k(est, x) + cut * _dk(est, x)
            return np.einsum("it,itd->id", coef, s)
        w = np.exp((self.lth - law).sum(1))
        if place != "loss":
            x = (law - self.lp).sum(1)
            coef = _k(est, x) if on else weights(w, _k(est, x))[0] * _k(est, x)
        else:
            x = (self.lth - self.lp).sum(1)
            dw, cut = weights(w, _k(est, x))
            coef = _dk(est, x) if on else dw * _k(est, x) + cut * _dk(est, x)
        return coef[:, None] * score

    def moments(self, impl, clip=CLIP, form="clip"):
        prob = self.q if impl.weighting == "on_policy" else np.exp(self.lold.sum(1))
        g = self.estimate(*impl, clip=clip, form=form)
        mean = prob @ g
        return mean, np.einsum("i,id,ie->de", prob, g, g) - np.outer(mean, mean)

    def kl_qp(self):
        return float(self.q @ (self.lth - self.lp).sum(1))

    def kl_pq(self):
        return float(self.p @ (self.lp - self.lth).sum(1))


# ------------------------------------------------------------------- the cases


def _case(markov, off, n=N):
    """``(params, p, old_params, flat, flat_old)`` of a test model."""
    if markov:
        p = jaxalign.MarkovLM.from_probs(MU, TRANS, length=n)
        params, old = (A, B), (A_OLD, B_OLD)
        flat, flat_old = np.concatenate([A, B.ravel()]), np.concatenate(
            [A_OLD, B_OLD.ravel()])
    else:
        p = jaxalign.MemorylessLM.from_probs(P, length=n)
        params, old, flat, flat_old = THETA, THETA_OLD, THETA, THETA_OLD
    if not off:
        old, flat_old = None, flat
    return params, p, old, flat, flat_old


def _enum(markov, off, n=N):
    params, p, old, flat, flat_old = _case(markov, off, n)
    lp0 = np.log(MU if markov else P)
    lp = np.log(TRANS) if markov else np.broadcast_to(np.log(P), (K, K))
    return Enum(flat, flat_old, lp0, lp, n, markov)


@functools.cache
def _summary(markov, off):
    with jax.enable_x64(True):
        params, p, old, _, _ = _case(markov, off)
        out = kg.summary(params, p, old_params=old, clip=CLIP,
                         implementations=OFF_GRID if off else kg.GRID)
    arrays = ("mean", "covariance", "cosine", "relative_bias", "variance", "kl_qp",
              "kl_pq", "grad_kl_qp", "grad_kl_pq")
    return out._replace(**{f: np.asarray(getattr(out, f)) for f in arrays})


def _close(got, want, rtol=1e-12):
    scale = max(float(np.max(np.abs(want))), 1e-3)
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


CASES = [(False, False), (False, True), (True, False), (True, True)]
IDS = ["memoryless", "memoryless-off", "markov", "markov-off"]


# ----------------------------------------------------------- every grid cell


@pytest.mark.parametrize(("markov", "off"), CASES, ids=IDS)
def test_every_cell_against_enumeration(markov, off):
    s = _summary(markov, off)
    e = _enum(markov, off)
    assert len(s.implementations) == (len(OFF_GRID) if off else 45)
    for j, impl in enumerate(s.implementations):
        mean, cov = e.moments(impl)
        _close(s.mean[j], mean)
        _close(s.covariance[j], cov)
        assert s.variance[j] == pytest.approx(np.trace(cov), rel=1e-12)
    # the true gradients: autodiff of the forward recursions against the
    # enumerated score identities and central differences of the enumerated KLs
    assert float(s.kl_qp) == pytest.approx(e.kl_qp(), rel=1e-12)
    assert float(s.kl_pq) == pytest.approx(e.kl_pq(), rel=1e-12)
    ell = (e.lth - e.lp).sum(1)
    _close(s.grad_kl_qp, e.q @ (ell[:, None] * e.s.sum(1)))
    _close(s.grad_kl_pq, -(e.p @ e.s.sum(1)))
    flat = _case(markov, off)[3]
    lp0 = np.log(MU if markov else P)
    lp = np.log(TRANS) if markov else np.broadcast_to(np.log(P), (K, K))
    h = 1e-5
    for d in range(flat.size):
        step = np.zeros_like(flat)
        step[d] = h
        hi, lo = (Enum(flat + sgn * step, flat, lp0, lp, N, markov) for sgn in (1, -1))
        fd = (hi.kl_qp() - lo.kl_qp()) / (2 * h)
        assert s.grad_kl_qp[d] == pytest.approx(fd, abs=1e-8)


def _tilted_reference():
    """A time-inhomogeneous p: the tilt of the chain (MU, TRANS)."""
    base = jaxalign.MarkovLM.from_probs(MU, TRANS, length=N)
    return jaxalign.markov.tilt(base, jaxalign.LinearReward([0.0, 1.0, 0.5]), 0.8)


@functools.cache
def _summary_varying(off):
    """The table of the time-varying policy ``(A, B_VAR)``: against the chain on
    policy, against its tilt (time-inhomogeneous too) off ``θ_old``."""
    with jax.enable_x64(True):
        p = _tilted_reference() if off else jaxalign.MarkovLM.from_probs(
            MU, TRANS, length=N)
        out = kg.summary((A, B_VAR), p, old_params=(A_OLD, B_VAR_OLD) if off else None,
                         clip=CLIP, implementations=OFF_GRID if off else kg.GRID)
        lp0, lp = np.asarray(p.log_init), np.asarray(p.log_trans)
    arrays = ("mean", "covariance", "kl_qp", "kl_pq", "grad_kl_qp", "grad_kl_pq")
    out = out._replace(**{f: np.asarray(getattr(out, f)) for f in arrays})
    flat = np.concatenate([A, B_VAR.ravel()])
    old = np.concatenate([A_OLD, B_VAR_OLD.ravel()]) if off else flat
    return out, Enum(flat, old, lp0, lp if lp.ndim == 3 else np.stack([lp] * (N - 1)),
                     N, True)


@pytest.mark.parametrize("off", [False, True], ids=["on-policy", "off"])
def test_time_varying_policy_every_cell_against_enumeration(off):
    s, e = _summary_varying(off)
    assert s.mean.shape == (len(s.implementations), K + (N - 1) * K * K)
    for j, impl in enumerate(s.implementations):
        mean, cov = e.moments(impl)
        _close(s.mean[j], mean)
        _close(s.covariance[j], cov)
    assert float(s.kl_qp) == pytest.approx(e.kl_qp(), rel=1e-12)
    assert float(s.kl_pq) == pytest.approx(e.kl_pq(), rel=1e-12)
    ell = (e.lth - e.lp).sum(1)
    _close(s.grad_kl_qp, e.q @ (ell[:, None] * e.s.sum(1)))
    _close(s.grad_kl_pq, -(e.p @ e.s.sum(1)))
    if off:  # the weighted rows are not the on-policy ones, and the clip binds
        w = np.exp(e.lth - e.lold)
        assert np.any(np.abs(w - 1) > CLIP) and not np.all(np.abs(w - 1) > CLIP)


@pytest.mark.parametrize("scale", [0.02, 1.5], ids=["series", "mixed"])
def test_true_gradients_exact_through_the_series_branch(scale, x64):
    """The chain KL (one home: ``markov._finite._chain_kl``) switches to a
    truncated series for ``|log q/p| < 0.5``; its gradients, both KLs, both chains
    time-varying, match enumeration to 1e-12 with every log-ratio in the series
    (``scale = 0.02``) or on both sides of the cut-off (``1.5``)."""
    p = _tilted_reference()
    lp0, lp = np.asarray(p.log_init), np.asarray(p.log_trans)
    params = (lp0 + scale * A, lp + scale * B_VAR)
    flat = np.concatenate([params[0], params[1].ravel()])
    e = Enum(flat, flat, lp0, lp, N, True)
    ell = e.lth - e.lp
    small = np.abs(ell) < 0.5
    assert small.all() if scale < 0.1 else (small.any() and not small.all())
    t = kg.true_gradients(params, p)
    assert float(t.kl_qp) == pytest.approx(e.kl_qp(), rel=1e-12)
    assert float(t.kl_pq) == pytest.approx(e.kl_pq(), rel=1e-12)
    _close(np.asarray(t.grad_kl_qp), e.q @ (ell.sum(1)[:, None] * e.s.sum(1)))
    _close(np.asarray(t.grad_kl_pq), -(e.p @ e.s.sum(1)))


def test_identical_slices_are_the_homogeneous_policy(x64):
    """``(A, B)`` and ``(A, [B, B, B])`` are one law; tying the slices, the
    homogeneous estimate is ``Jᵀ g`` for the time-varying one (``J`` stacks an
    identity per slice: the chain rule), so the means are ``Jᵀ E g`` and the
    covariances ``Jᵀ Cov J``, the KLs equal."""
    hom = _summary(True, True)
    tied = kg.summary((A, np.stack([B] * (N - 1))),
                      jaxalign.MarkovLM.from_probs(MU, TRANS, length=N),
                      old_params=(A_OLD, np.stack([B_OLD] * (N - 1))), clip=CLIP,
                      implementations=OFF_GRID)
    jac = np.zeros((K + (N - 1) * K * K, K + K * K))
    jac[:K, :K] = np.eye(K)
    for t in range(N - 1):
        jac[K + t * K * K:K + (t + 1) * K * K, K:] = np.eye(K * K)
    _close(np.asarray(tied.mean) @ jac, hom.mean)
    _close(np.einsum("rde,df,eg->rfg", np.asarray(tied.covariance), jac, jac),
           hom.covariance)
    _close(np.asarray(tied.grad_kl_qp) @ jac, hom.grad_kl_qp)
    _close(np.asarray(tied.grad_kl_pq) @ jac, hom.grad_kl_pq)
    assert float(tied.kl_qp) == pytest.approx(float(hom.kl_qp), rel=1e-12)
    assert float(tied.kl_pq) == pytest.approx(float(hom.kl_pq), rel=1e-12)
    v_tied = kg.value_moments((A, np.stack([B] * (N - 1))), _tilted_reference())
    v_hom = kg.value_moments((A, B), _tilted_reference())
    for f in ("token_mean", "token_variance", "sequence_mean", "sequence_variance"):
        _close(np.asarray(getattr(v_tied, f)), np.asarray(getattr(v_hom, f)))


def test_off_policy_rows_move_off_theta_old():
    """Off θ_old the weighted rows are not the on-policy ones (the check above
    is not vacuous), and the labels say the identities do not apply."""
    on, off = _summary(True, False), _summary(True, True)
    for j, impl in enumerate(off.implementations):
        if impl.weighting != "ratio":
            continue
        i = kg.GRID.index(impl)
        if impl.level == "sequence" and impl.placement == "loss":
            # exact importance sampling: E_old[∇(w k(ℓ))] = ∇E_q[k(ℓ)] at any θ_old
            _close(off.mean[j], on.mean[i])
            assert off.divergence[j] == on.divergence[i] != "n/a (theta != theta_old)"
        else:
            assert np.max(np.abs(off.mean[j] - on.mean[i])) > 1e-3, impl.name
            assert off.divergence[j] == "n/a (theta != theta_old)"
    for markov in (False, True):  # the clip binds on some tokens, not on all
        e = _enum(markov, True)
        w = np.exp(e.lth - e.lold)
        binds = np.abs(w - 1) > CLIP
        assert np.any(binds) and not np.all(binds)


# ------------------------------------------------------------------ identities


def _partial_qp(e):
    return e.q @ np.einsum("it,itd->id", e.lth - e.lp, e.s)


def _partial_pq(e):
    return -(e.q @ np.einsum("it,itd->id", np.exp(e.lp - e.lth), e.s))


@pytest.mark.parametrize("markov", [False, True], ids=["memoryless", "markov"])
def test_labels_are_the_identities(markov):
    """Each label is checked numerically: the named gradient at 1e-12, "none" far
    from all of them."""
    s = _summary(markov, False)
    e = _enum(markov, False)
    named = {"KL(q||p)": s.grad_kl_qp, "KL(p||q)": s.grad_kl_pq,
             "KL(q||p) - KL(p||q)": s.grad_kl_qp - s.grad_kl_pq,
             "0": np.zeros_like(s.grad_kl_qp), "partial KL(q||p)": _partial_qp(e),
             "partial KL(p||q)": _partial_pq(e)}
    seen = set()
    for j, impl in enumerate(s.implementations):
        label = s.divergence[j]
        seen.add(label)
        if label == "none":
            for ref in named.values():
                assert np.max(np.abs(s.mean[j] - ref)) > 1e-3, impl.name
        else:
            _close(s.mean[j], named[label])
        if label.startswith("partial"):  # a nonzero gap to the full gradient
            full = s.grad_kl_qp if "KL(q||p)" in label else s.grad_kl_pq
            assert np.max(np.abs(s.mean[j] - full)) > 1e-2, impl.name
    assert ("partial KL(q||p)" in seen) == markov
    assert {"KL(q||p)", "KL(p||q)", "0", "none"} <= seen


def _row(s, *impl):
    return s.mean[s.implementations.index(kg.Implementation(*impl))]


@pytest.mark.parametrize("markov", [False, True], ids=["memoryless", "markov"])
def test_issue_identities(markov):
    s = _summary(markov, False)
    e = _enum(markov, False)
    # k1 in the reward with reward-to-go: the true gradient; k1 as a loss: zero.
    _close(_row(s, "k1", "reward_to_go", "token"), s.grad_kl_qp)
    _close(_row(s, "k1", "loss", "token"), 0 * s.grad_kl_qp)
    # per-token k2 as a loss: E[Σ_t ℓ_t ∇log q(y_t | y_{t-1})] ...
    k2 = _row(s, "k2", "loss", "token")
    _close(k2, _partial_qp(e))
    gap = np.linalg.norm(k2 - s.grad_kl_qp)
    if markov:  # ... a partial gradient with memory (values in the report)
        assert gap == pytest.approx(0.10290708669950978, rel=1e-9)
        assert np.linalg.norm(s.grad_kl_qp) == pytest.approx(0.5815610609591989,
                                                             rel=1e-9)
    else:  # ... the full one without
        assert gap < 1e-14
    # sequence-level k3 as a loss: the reverse KL's gradient.
    _close(_row(s, "k3", "loss", "sequence"), s.grad_kl_pq)


@pytest.mark.parametrize("markov", [False, True], ids=["memoryless", "markov"])
def test_off_policy_one_step(markov, x64):
    """∇(w k3) = w ℓ ∇log q and ∇(w k2) = w ℓ (1 + ℓ/2) ∇log q for every sequence
    (jax.grad at θ ≠ θ_old); at θ = θ_old w·k3 and w·k1 are unbiased, w·k2 is not,
    and per-token w_t·k3 is the per-token k2 loss."""
    _, p, _, flat, flat_old = _case(markov, True)
    e = _enum(markov, True)
    lp = jnp.asarray(e.lp)

    def log_q(f, y):
        if markov:
            la = jax.nn.log_softmax(f[:K])
            lb = jax.nn.log_softmax(f[K:].reshape(K, K), axis=-1)
            return la[y[0]] + jnp.sum(lb[y[:-1], y[1:]])
        return jnp.sum(jax.nn.log_softmax(f)[y])

    for i in (17, 80):
        y = jnp.asarray(e.y[i])
        lold = log_q(jnp.asarray(flat_old), y)

        def wk(f, est, y=y, i=i, lold=lold):
            ell = log_q(f, y) - jnp.sum(lp[i])
            k = {"k2": 0.5 * ell**2, "k3": jnp.expm1(-ell) + ell}[est]
            return jnp.exp(log_q(f, y) - lold) * k

        w = math.exp(e.lth[i].sum() - e.lold[i].sum())
        ell = (e.lth[i] - e.lp[i]).sum()
        score = e.s[i].sum(0)
        _close(jax.grad(wk)(jnp.asarray(flat), "k3"), w * ell * score)
        _close(jax.grad(wk)(jnp.asarray(flat), "k2"), w * ell * (1 + ell / 2) * score)
    s = _summary(markov, False)
    for est in ("k1", "k3"):
        _close(_row(s, est, "loss", "sequence", "ratio"), s.grad_kl_qp)
    assert np.linalg.norm(_row(s, "k2", "loss", "sequence", "ratio")
                          - s.grad_kl_qp) > 0.05
    _close(_row(s, "k3", "loss", "token", "ratio"), _row(s, "k2", "loss", "token"))
    # the clip is inactive at θ = θ_old for c > 0
    for impl in kg.GRID:
        if impl.weighting == "clipped":
            _close(_row(s, *impl), _row(s, *impl._replace(weighting="ratio")))


def test_clip_zero_freezes_the_weight(x64):
    params, p, _, _, _ = _case(False, False)
    s = kg.summary(params, p, clip=0.0)
    for j, impl in enumerate(s.implementations):
        if impl.weighting != "clipped":
            continue
        want = (0 * s.grad_kl_qp if impl.placement != "loss"
                else s.mean[kg.GRID.index(impl._replace(weighting="on_policy"))])
        _close(np.asarray(s.mean[j]), np.asarray(want))
        assert s.divergence[j] == ("0" if impl.placement != "loss" else
                                   kg.divergence_of(impl._replace(
                                       weighting="on_policy"), markov=False))


def test_gradient_moments_is_the_summary_row(x64):
    params, p, old, _, _ = _case(True, True)
    s = _summary(True, True)
    for impl in [kg.Implementation("k2", "reward_to_go", "token", "clipped"),
                 kg.Implementation("k3", "loss", "sequence", "ratio")]:
        g = kg.gradient_moments(params, p, *impl, old_params=old, clip=CLIP)
        j = s.implementations.index(impl)
        _close(np.asarray(g.mean), s.mean[j])
        _close(np.asarray(g.covariance), s.covariance[j])


def test_inhomogeneous_reference(x64):
    """A time-inhomogeneous Markov p (the tilt of a chain) against enumeration."""
    base = jaxalign.MarkovLM.from_probs(MU, TRANS, length=N)
    p = jaxalign.markov.tilt(base, jaxalign.LinearReward([0.0, 1.0, 0.5]), 0.8)
    flat = np.concatenate([A, B.ravel()])
    e = Enum(flat, flat, np.asarray(p.log_init), np.asarray(p.log_trans), N, True)
    for impl in [kg.Implementation("k3", "reward_to_go", "token"),
                 kg.Implementation("k2", "loss", "sequence")]:
        g = kg.gradient_moments((A, B), p, *impl)
        mean, cov = e.moments(impl)
        _close(np.asarray(g.mean), mean)
        _close(np.asarray(g.covariance), cov)


# ------------------------------------------------------------ values of k


def test_value_moments_against_enumeration(x64):
    n = 5
    v = kg.value_moments((A, B), jaxalign.MarkovLM.from_probs(MU, TRANS, length=n))
    assert v.length.tolist() == [1, 2, 3, 4, 5]
    for t in range(1, n + 1):
        e = _enum(True, False, n=t)
        ell_t = e.lth - e.lp
        for r, est in enumerate(kg.ESTIMATORS):
            for level, value in (("token", _k(est, ell_t).sum(1)),
                                 ("sequence", _k(est, ell_t.sum(1)))):
                mean = e.q @ value
                var = e.q @ (value - mean) ** 2
                got_mean = getattr(v, f"{level}_mean")[r, t - 1]
                got_var = getattr(v, f"{level}_variance")[r, t - 1]
                assert float(got_mean) == pytest.approx(mean, rel=1e-12, abs=1e-14)
                assert float(got_var) == pytest.approx(var, rel=1e-11, abs=1e-14)


def test_time_varying_value_moments_against_enumeration(x64):
    p = _tilted_reference()
    v = kg.value_moments((A, B_VAR), p)
    e = Enum(np.concatenate([A, B_VAR.ravel()]), np.concatenate([A, B_VAR.ravel()]),
             np.asarray(p.log_init), np.asarray(p.log_trans), N, True)
    ell = e.lth - e.lp
    for r, est in enumerate(kg.ESTIMATORS):
        for level, value in (("token", _k(est, ell).sum(1)),
                             ("sequence", _k(est, ell.sum(1)))):
            mean = e.q @ value
            assert float(getattr(v, f"{level}_mean")[r, -1]) == pytest.approx(
                mean, rel=1e-12)
            assert float(getattr(v, f"{level}_variance")[r, -1]) == pytest.approx(
                e.q @ (value - mean) ** 2, rel=1e-11)


def test_value_variance_sequence_exponential_token_linear(x64):
    """Memoryless closed forms: Var Σ_t k3(ℓ_t) = t Var k3(ℓ_1) (linear) and
    Var k3(ℓ) = ρ^t − 1 + t σ² − 2t (KL(q‖p) + KL(p‖q)) per token, ρ = Σ p²/q
    (exponential); a chain's variances grow the same ways."""
    n = 40
    v = kg.value_moments(THETA, jaxalign.MemorylessLM.from_probs(P, length=n))
    q = _softmax(THETA)
    ell = np.log(q) - np.log(P)
    t = np.arange(1, n + 1)
    k3 = np.expm1(-ell) + ell
    tok = t * (q @ k3**2 - (q @ k3) ** 2)
    rho = np.sum(P**2 / q)
    sigma2 = q @ ell**2 - (q @ ell) ** 2
    seq = rho**t - 1 + t * sigma2 - 2 * t * (q @ ell + P @ -ell)
    np.testing.assert_allclose(v.token_variance[2], tok, rtol=1e-12)
    np.testing.assert_allclose(v.sequence_variance[2], seq, rtol=1e-10)
    assert rho > 1.05 and v.sequence_variance[2, -1] > 3 * v.token_variance[2, -1]
    # a chain: the token variance's increments settle to a constant (linear), the
    # sequence variance's ratios to a constant > 1 (exponential)
    chain = kg.value_moments((A, B), jaxalign.MarkovLM.from_probs(MU, TRANS,
                                                                  length=n))
    inc = np.diff(np.asarray(chain.token_variance[2]))
    assert abs(inc[-1] / inc[-2] - 1) < 1e-6 and inc[-1] > 0
    ratio = np.asarray(chain.sequence_variance[2, 1:] / chain.sequence_variance[2, :-1])
    assert abs(ratio[-1] / ratio[-2] - 1) < 1e-3 and ratio[-1] > 1.05
    assert float(chain.sequence_variance[2, -1]) > 100 * float(
        chain.token_variance[2, -1])


# ---------------------------------------------------------------- Monte Carlo


@pytest.mark.parametrize(("markov", "off"), [(True, False), (False, True)],
                         ids=["markov", "memoryless-off"])
def test_monte_carlo_within_5_stderr(markov, off, key, x64):
    params, p, old, _, _ = _case(markov, off)
    s = _summary(markov, off)
    for j, impl in enumerate(s.implementations):
        est = kg.monte_carlo_gradient(jax.random.fold_in(key, j), params, p, *impl,
                                      old_params=old, clip=CLIP, num_samples=4000)
        mean, stderr = np.asarray(est.mean), np.asarray(est.stderr)
        z = (mean - s.mean[j]) / np.where(stderr > 0, stderr, 1.0)
        assert np.all(np.abs(z) < 5), (impl.name, z)
        assert np.all((stderr > 0) | (np.abs(mean - s.mean[j]) < 1e-12))
        # the sample variance per sample agrees with the exact one (loosely)
        assert float(est.variance) == pytest.approx(s.variance[j], rel=0.25,
                                                    abs=1e-9), impl.name


def test_monte_carlo_time_varying_within_5_stderr(key, x64):
    """One cell per recursion, on and off policy, for the time-varying policy."""
    for off in (False, True):
        s, _ = _summary_varying(off)
        p = _tilted_reference() if off else jaxalign.MarkovLM.from_probs(
            MU, TRANS, length=N)
        for i, cell in enumerate([("k1", "reward_to_go", "token"),
                                  ("k3", "reward", "token"), ("k2", "loss", "token"),
                                  ("k3", "loss", "sequence")]):
            impl = kg.Implementation(*cell, "ratio" if off else "on_policy")
            est = kg.monte_carlo_gradient(
                jax.random.fold_in(key, 10 * off + i), (A, B_VAR), p, *impl,
                old_params=(A_OLD, B_VAR_OLD) if off else None, num_samples=4000)
            want = s.mean[s.implementations.index(impl)]
            mean, stderr = np.asarray(est.mean), np.asarray(est.stderr)
            z = (mean - want) / np.where(stderr > 0, stderr, 1.0)
            assert np.all(np.abs(z) < 5), (impl.name, z)
            assert np.all((stderr > 0) | (np.abs(mean - want) < 1e-12)), impl.name


# ------------------------------------------------- PPO's min form of the clip

# exact off θ_old: the token-level clipped cells but k1 in a reward (its sum's sign)
MIN_EXACT = tuple(i for i in kg.GRID if i.weighting == "clipped" and i.level == "token"
                  and not (i.estimator == "k1" and i.placement != "loss"))


@pytest.mark.parametrize("varying", [False, True], ids=["homogeneous", "varying"])
def test_min_clip_form_against_enumeration(varying, x64):
    trans, trans_old = (B_VAR, B_VAR_OLD) if varying else (B, B_OLD)
    p = jaxalign.MarkovLM.from_probs(MU, TRANS, length=N)
    s = kg.summary((A, trans), p, old_params=(A_OLD, trans_old), clip=CLIP,
                   implementations=MIN_EXACT, clip_form="min")
    lp = np.stack([np.log(TRANS)] * (N - 1))
    e = Enum(np.concatenate([A, trans.ravel()]), np.concatenate([A_OLD,
                                                                 trans_old.ravel()]),
             np.log(MU), lp, N, True)
    differs = 0
    for j, impl in enumerate(s.implementations):
        mean, cov = e.moments(impl, form="min")
        _close(np.asarray(s.mean[j]), mean)
        _close(np.asarray(s.covariance[j]), cov)
        differs += np.max(np.abs(mean - e.moments(impl)[0])) > 1e-3
    assert differs >= len(MIN_EXACT) // 2  # not the clip form under another name
    if varying:
        return
    # at θ = θ_old (w = 1) the min form is the ratio for any c >= 0, c = 0 included
    rows = [i for i in kg.GRID if i.weighting != "on_policy"]
    for c in (0.0, CLIP):
        at_old = kg.summary((A, trans), p, clip=c, clip_form="min",
                            implementations=rows)
        ratio = [rows.index(i._replace(weighting="ratio"))
                 for i in at_old.implementations if i.weighting == "clipped"]
        clipped = [j for j, i in enumerate(at_old.implementations)
                   if i.weighting == "clipped"]
        _close(np.asarray(at_old.mean)[clipped], np.asarray(at_old.mean)[ratio])
        assert [at_old.divergence[j] for j in clipped] == [
            at_old.divergence[j] for j in ratio]


def test_min_clip_form_surrogate_per_sample(x64):
    """jax.grad of the surrogate loss an RL code differentiates (the one PPO/GRPO
    training adds) against the hand-written g(y), sequence by sequence, for every
    clipped cell off θ_old (k1 rewards and the sequence level included)."""
    p = jaxalign.MarkovLM.from_probs(MU, TRANS, length=N)
    problem, markov, _ = kg._problem((A, B), p, (A_OLD, B_OLD))
    e = _enum(True, True)
    rows = np.arange(0, K**N, 7)
    grad = jax.jit(jax.vmap(jax.grad(kg._surrogate), in_axes=(
        None, 0, None, None, None, None, None, None)), static_argnums=(6, 7))
    for impl in (i for i in kg.GRID if i.weighting == "clipped"):
        want = e.estimate(*impl, form="min")
        cell = kg._cell(impl, jnp.asarray(CLIP), True)
        got = grad(problem.flat, jnp.asarray(e.y[rows]), problem, cell,
                   jnp.asarray(impl.level == "token"),
                   jnp.asarray(impl.placement == "reward_to_go"), K, markov)
        np.testing.assert_allclose(np.asarray(got), want[rows], rtol=1e-10,
                                   atol=1e-12, err_msg=impl.name)


def test_monte_carlo_min_clip_form_off_theta_old(key, x64):
    """The cells the exact route refuses, by Monte Carlo against enumeration."""
    params, p, old, _, _ = _case(True, True)
    e = _enum(True, True)
    for i, impl in enumerate([kg.Implementation("k1", "reward_to_go", "token",
                                                "clipped"),
                              kg.Implementation("k3", "loss", "sequence", "clipped")]):
        est = kg.monte_carlo_gradient(jax.random.fold_in(key, i), params, p, *impl,
                                      old_params=old, clip=CLIP, clip_form="min",
                                      num_samples=4000)
        mean, _ = e.moments(impl, form="min")
        z = (np.asarray(est.mean) - mean) / np.asarray(est.stderr)
        assert np.all(np.abs(z) < 5), (impl.name, z)


def test_monte_carlo_accepts_sequence_clip_off_theta_old(key, x64):
    params, p, old, flat, flat_old = _case(False, True)
    impl = kg.Implementation("k3", "loss", "sequence", "clipped")
    est = kg.monte_carlo_gradient(key, params, p, *impl, old_params=old, clip=CLIP,
                                  num_samples=4000)
    mean, _ = _enum(False, True).moments(impl)
    z = (np.asarray(est.mean) - mean) / np.asarray(est.stderr)
    assert np.all(np.abs(z) < 5), z


# ------------------------------------------------------------------ bad input


def test_bad_input(x64):
    mem = jaxalign.MemorylessLM.from_probs(P, length=N)
    chain = jaxalign.MarkovLM.from_probs(MU, TRANS, length=N)
    cases = [
        (lambda: kg.gradient_moments(THETA[:2], mem), r"params must have shape \(K,\)"),
        (lambda: kg.gradient_moments((A, B), mem), "params must be logits"),
        (lambda: kg.gradient_moments(THETA, chain), "params must be a pair"),
        (lambda: kg.gradient_moments((A, B[:2]), chain), "params must be"),
        (lambda: kg.gradient_moments((A, B_VAR[:2]), chain),
         r"params must be .*\(n - 1, K, K\).* got shapes \(3,\) and \(2, 3, 3\)"),
        (lambda: kg.gradient_moments((A, B_VAR), chain, old_params=(A, B)),
         "old_params must have the form of params"),
        (lambda: kg.gradient_moments(THETA, mem, old_params=(A, B)), "old_params"),
        (lambda: kg.gradient_moments(THETA, mem, "k4"), "estimator must be one of"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "penalty"),
         "placement must be one of"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "loss", "batch"),
         "level must be one of"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "loss", "token", "ppo"),
         "weighting must be one of"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "reward_to_go", "sequence"),
         "reward_to_go"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "loss", "token", "clipped",
                                     clip=-0.1), r"clip must be .* got -0.1"),
        (lambda: kg.summary(THETA, mem, clip=float("nan")), "clip must be"),
        (lambda: kg.summary(THETA, mem, old_params=THETA_OLD),
         "weighting='clipped' at level='sequence' needs old_params"),
        (lambda: kg.summary(THETA, mem, implementations=()), "implementations"),
        (lambda: kg.gradient_moments(THETA, mem, clip_form="max"),
         r"clip_form must be one of \('clip', 'min'\), got 'max'"),
        (lambda: kg.gradient_moments(THETA, mem, "k1", "reward", "token", "clipped",
                                     old_params=THETA_OLD, clip_form="min"),
         "clip_form='min' with estimator='k1' in a reward needs old_params"),
        (lambda: kg.true_gradients(THETA, "p"), "p must be a MemorylessLM or"),
        (lambda: kg.value_moments(THETA, jaxalign.MemorylessLM.from_probs(
            [0.5, 0.5, 0.0], length=N)), "positive probability"),
        (lambda: kg.gradient_moments([0.0, np.inf, 0.0], mem), "finite"),
        (lambda: kg.monte_carlo_gradient(jax.random.key(0), THETA, mem,
                                         num_samples=1), "num_samples"),
        (lambda: kg.divergence_of(("k1", "loss", "token", "offline"), markov=False),
         "weighting"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
