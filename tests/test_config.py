"""Sweep specification parsing and validation."""

import math
import re
import tomllib

import pytest

from jaxalign import config as cfg

BASE = """
seed = 3
replicates = 256
methods = ["tilted", "best_of_n"]

[[model]]
name = "b"
bernoulli = 0.3
rewards = [0.0, 1.0]

[grid]
length = [4, 8]
delta = [0.1, 0.2]
"""


def parse(text):
    return cfg.parse_config(tomllib.loads(text))


def test_parse_and_points():
    c = parse(BASE)
    assert c.seed == 3 and c.replicates == 256 and c.methods == ("tilted", "best_of_n")
    points = cfg.grid_points(c)
    # 2 lengths x (2 tilted deltas + 2 best-of-N deltas)
    assert len(points) == 8
    bon = [p for p in points if p.method == "best_of_n"]
    for p in bon:
        assert p.num_candidates == math.ceil(math.exp(p.length * p.delta))
        assert p.log_num_candidates == pytest.approx(math.log(p.num_candidates))
    assert len({p.tag for p in points}) == len(points)


def test_point_tags_do_not_depend_on_the_rest_of_the_grid():
    small = cfg.grid_points(parse(BASE))
    big = cfg.grid_points(parse(BASE.replace("length = [4, 8]", "length = [2, 4, 8]")))
    big_tags = {p.tag: p.key_data for p in big}
    for p in small:
        assert big_tags[p.tag] == p.key_data


def test_huge_n_keeps_log_n():
    c = parse(BASE.replace("length = [4, 8]", "length = [10000]"))
    p = [p for p in cfg.grid_points(c) if p.method == "best_of_n"][0]
    assert p.num_candidates is None
    assert p.log_num_candidates == pytest.approx(1000.0)


@pytest.mark.parametrize(
    "change, key",
    [
        (("seed = 3", "sed = 3"), "sed"),
        (("seed = 3", "seed = -1"), "seed"),
        (("replicates = 256", "replicates = 0"), "replicates"),
        (("replicates = 256", 'replicates = "many"'), "replicates"),
        (("replicates = 256", "replicates = 10000000000"), "replicates"),
        (("length = [4, 8]", "length = [10000000000]"), "length"),
        (('methods = ["tilted", "best_of_n"]', 'methods = ["ppo"]'), "methods"),
        (('methods = ["tilted", "best_of_n"]', "methods = []"), "methods"),
        (("length = [4, 8]", "length = []"), "length"),
        (("length = [4, 8]", "length = [0]"), "length"),
        (("delta = [0.1, 0.2]", "delta = [-0.1]"), "delta"),
        (("delta = [0.1, 0.2]", "deltas = [0.1]"), "grid.deltas"),
        (("delta = [0.1, 0.2]", "num_candidates = [0]"), "num_candidates"),
        (("bernoulli = 0.3", "bernoulli = 1.5"), "model[0].bernoulli"),
        (("rewards = [0.0, 1.0]", "rewards = [0.0, 1.0, 2.0]"), "model[0].rewards"),
        (("rewards = [0.0, 1.0]", "rewards = [0.0, nan]"), "model[0].rewards"),
        (("bernoulli = 0.3", "probs = [0.5, 0.6]"), "model[0]"),
        (("bernoulli = 0.3", "colour = 1"), "model[0].colour"),
        (("seed = 3", 'seed = 3\nsampling = "mcmc"'), "sampling"),
        (("seed = 3", 'seed = 3\nprng = "mt19937"'), "prng"),
        (("delta = [0.1, 0.2]", "delta = [0.1, 0.2]\nbeta = [-1.0]"), "beta"),
        (("delta = [0.1, 0.2]", "delta = [0.1, 0.2]\nthreshold = [nan]"), "threshold"),
        (("delta = [0.1, 0.2]", "delta = [0.1, 0.2]\nstrength = [inf]"), "strength"),
    ],
)
def test_bad_config_names_the_key(change, key):
    text = BASE.replace(*change)
    with pytest.raises(cfg.ConfigError, match=re.escape(f"config key {key!r}"[:-1])):
        parse(text)


def test_huge_token_level_sweep_is_refused_up_front():
    # sampling = "token" with N = 10**9 at n = 4 ran silently for minutes before.
    text = ('sampling = "token"\n' + BASE).replace(
        "delta = [0.1, 0.2]", "num_candidates = [1000000000]").replace(
        "length = [4, 8]", "length = [4]").replace('"tilted", ', "")
    with pytest.raises(cfg.ConfigError, match=r"'sampling'.*tokens.* s at .*"
                                              r'sampling = "law"'):
        parse(text)
    from jaxalign import sample

    with sample.token_budget(None):
        assert parse(text).sampling == "token"


def test_method_without_strength_axis():
    text = BASE.replace("delta = [0.1, 0.2]", "lam = [0.5]")
    with pytest.raises(cfg.ConfigError, match="best_of_n"):
        parse(text)


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 3")
    with pytest.raises(cfg.ConfigError, match="not valid TOML"):
        cfg.load_config(bad)


def test_embedded_examples_parse():
    examples = cfg.example_configs()
    assert "yang2024_equivalence" in examples
    for text in examples.values():
        c = parse(text)
        assert cfg.grid_points(c)


def test_model_kinds_build():
    text = """
methods = ["base"]
[[model]]
name = "z"
zipf = 5
exponent = 1.1
rewards = [0, 1, 2, 3, 4]
[[model]]
name = "d"
dirichlet = 3
concentration = 0.5
seed = 7
rewards = [0, 1, 2]
[[model]]
name = "u"
uniform = 2
rewards = [0, 1]
[grid]
length = [3]
"""
    c = parse(text)
    for spec in c.models:
        lm, reward = spec.build(3)
        assert lm.num_tokens == reward.num_tokens
    # The Dirichlet model depends on its seed only.
    a = c.models[1].build(3)[0].probs
    b = c.models[1].build(5)[0].probs
    assert a.tolist() == b.tolist()


MARKOV = """
methods = ["tilted"]
[[model]]
name = "sticky"
markov = { sticky = 0.5, probs = [0.4, 0.3, 0.2, 0.1] }
rewards = [0.0, 1.0, 2.0, 3.0]
[[model]]
name = "explicit"
markov = { init = [0.5, 0.5], trans = [[0.9, 0.1], [0.2, 0.8]] }
pair_rewards = [[1.0, 0.0], [0.0, 1.0]]
first_rewards = [0.5, 0.0]
[[model]]
name = "random"
markov = { dirichlet = 3, concentration = 2.0, seed = 1 }
pair_rewards = [[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]]
[grid]
length = [4]
lam = [0.5]
"""


def test_markov_models_build_through_the_chain_constructors(x64):
    import json

    import jax
    import numpy as np

    import jaxalign

    c = parse(MARKOV)
    sticky, explicit, random = (spec.build(5) for spec in c.models)
    direct = [
        (jaxalign.MarkovLM.sticky([0.4, 0.3, 0.2, 0.1], 0.5, length=5),
         jaxalign.LinearReward([0.0, 1.0, 2.0, 3.0])),
        (jaxalign.MarkovLM.from_probs([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], length=5),
         jaxalign.PairReward([[1.0, 0.0], [0.0, 1.0]], [0.5, 0.0])),
        (jaxalign.MarkovLM.dirichlet(jax.random.key(1), 3, 2.0, length=5),
         jaxalign.PairReward([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])),
    ]
    for built, want in zip((sticky, explicit, random), direct, strict=True):
        assert jax.tree.structure(built) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # First-token rewards default to zero, as PairReward's own.
    assert np.asarray(random[1].first_rewards).tolist() == [0.0, 0.0, 0.0]
    # The run directory's config.json rebuilds the same specs.
    stored = json.loads(json.dumps(c.to_dict()))["models"]
    assert tuple(cfg.ModelSpec.from_dict(m) for m in stored) == c.models
    assert [s.num_tokens for s in c.models] == [4, 2, 3]


@pytest.mark.parametrize(
    "change, key, allowed",
    [
        (("probs = [0.4, 0.3, 0.2, 0.1]", "probs = [0.4, 0.3, 0.2, 0.2]"),
         "model[0].markov", "sum to 1"),
        (("sticky = 0.5", "sticky = 1.5"), "model[0].markov.sticky", "[0, 1]"),
        (("sticky = 0.5", "sticky = true"), "model[0].markov.sticky", "[0, 1]"),
        (("sticky = 0.5, ", ""), "model[0].markov", "exactly one of the forms"),
        (("sticky = 0.5, probs = [0.4, 0.3, 0.2, 0.1]", "sticky = 0.5"),
         "model[0].markov.probs", "needs"),
        (("sticky = 0.5,", "sticky = 0.5, init = [1.0, 0.0, 0.0, 0.0],"),
         "model[0].markov", "exactly one of the forms"),
        (("sticky = 0.5,", "sticky = 0.5, seed = 1,"), "model[0].markov.seed",
         "keys of the 'sticky' form"),
        (("{ sticky = 0.5, probs = [0.4, 0.3, 0.2, 0.1] }", "3"), "model[0].markov",
         "a table"),
        (("rewards = [0.0, 1.0, 2.0, 3.0]", "rewards = [0.0, 1.0]"),
         "model[0].rewards", "K = 4"),
        (("rewards = [0.0, 1.0, 2.0, 3.0]", ""), "model[0].rewards", "exactly one"),
        (("rewards = [0.0, 1.0, 2.0, 3.0]",
          "rewards = [0.0, 1.0, 2.0, 3.0]\nseed = 2"), "model[0].seed",
         "inside the markov table"),
        (("[[0.9, 0.1], [0.2, 0.8]]", "[[0.9, 0.1], [0.2, 0.7]]"),
         "model[1].markov", "sum to 1"),
        (("[[0.9, 0.1], [0.2, 0.8]]", "[[0.9, -0.1], [0.2, 0.8]]"),
         "model[1].markov", "non-negative"),
        (("[[0.9, 0.1], [0.2, 0.8]]", "[[0.9, 0.1], [0.2]]"),
         "model[1].markov.trans[1]", "at least 2 numbers"),
        (("[[0.9, 0.1], [0.2, 0.8]]", "[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]"),
         "model[1].markov.trans[0]", "square"),
        (("[[0.9, 0.1], [0.2, 0.8]]",
          "[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1]]"),
         "model[1].markov.trans", "K = 2 from init"),
        (("trans = [[0.9, 0.1], [0.2, 0.8]]", "trans = [0.9, 0.1]"),
         "model[1].markov.trans", "K x K matrix"),
        (("init = [0.5, 0.5]", "init = [0.5, nan]"), "model[1].markov.init",
         "finite"),
        (("pair_rewards = [[1.0, 0.0], [0.0, 1.0]]",
          "pair_rewards = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]"),
         "model[1].pair_rewards", "K = 2"),
        (("first_rewards = [0.5, 0.0]", "first_rewards = [0.5, 0.0, 1.0]"),
         "model[1].first_rewards", "K = 2"),
        (("first_rewards = [0.5, 0.0]", "first_rewards = [0.5, inf]"),
         "model[1].first_rewards", "finite"),
        (("pair_rewards = [[1.0, 0.0], [0.0, 1.0]]\n", ""),
         "model[1].first_rewards", "only with pair_rewards"),
        (("pair_rewards = [[1.0, 0.0], [0.0, 1.0]]",
          "pair_rewards = [[1.0, 0.0], [0.0, 1.0]]\nrewards = [0.0, 1.0]"),
         "model[1].rewards", "exactly one"),
        (("dirichlet = 3", "dirichlet = 1"), "model[2].markov.dirichlet", ">= 2"),
        (("concentration = 2.0", "concentration = 0.0"),
         "model[2].markov.concentration", "> 0"),
        (("seed = 1", "seed = -1"), "model[2].markov.seed", ">= 0"),
        (("seed = 1 }", "seed = 1, probs = [0.5, 0.5] }"),
         "model[2].markov.probs", "keys of the 'dirichlet' form"),
    ],
)
def test_bad_markov_model_names_the_key(change, key, allowed):
    _refused(MARKOV, change, key, allowed)


def _refused(text, change, key, allowed):
    """``text`` with one ``change`` is a ConfigError naming ``key`` and ``allowed``."""
    assert change[0] in text
    pattern = re.escape(f"config key {key!r}") + ".*" + re.escape(allowed)
    with pytest.raises(cfg.ConfigError, match=pattern):
        parse(text.replace(*change, 1))


def test_pair_rewards_need_a_chain():
    text = BASE.replace("rewards = [0.0, 1.0]",
                        "pair_rewards = [[0.0, 1.0], [1.0, 0.0]]")
    with pytest.raises(cfg.ConfigError, match=r"'model\[0\].pair_rewards'.*markov"):
        parse(text)


def test_chains_refuse_counts_but_take_reweighting_at_the_token_level():
    """A chain's reward is not a function of its token counts: counts refused.  The
    policies without a token sampler of their own (rejection) reweight the chain's
    own token draws: accepted at the token level as at the law level."""
    with pytest.raises(cfg.ConfigError, match=r"config key 'sampling': got 'counts'"
                                              r".*Markov model 'sticky'"):
        parse('sampling = "counts"\n' + MARKOV)
    text = MARKOV.replace('methods = ["tilted"]', 'methods = ["tilted", "rejection"]'
                          ).replace("lam = [0.5]", "lam = [0.5]\nthreshold = [2.0]")
    with pytest.raises(cfg.ConfigError, match=r"config key 'sampling': got 'counts'"):
        parse('sampling = "counts"\n' + text)
    for sampling in ("token", "law"):
        config = parse(f'sampling = "{sampling}"\n' + text)
        assert config.methods == ("tilted", "rejection")
        assert config.sampling == sampling


INHOMOGENEOUS = """
methods = ["tilted"]
[[model]]
name = "steps"
markov = { init = [0.6, 0.4], trans = [[[0.9, 0.1], [0.3, 0.7]],
                                       [[0.5, 0.5], [0.2, 0.8]]] }
rewards = [0.0, 1.0]
[[model]]
name = "logit-steps"
markov = { init_logits = [0.0, 1.0], trans_logits = [[[2.0, 0.0], [0.0, 1.0]],
                                                     [[0.0, 0.5], [1.5, 0.0]]] }
rewards = [0.0, 1.0]
[[model]]
name = "logits"
markov = { init_logits = [0.0, 1.0], trans_logits = [[2.0, 0.0], [0.0, 1.0]] }
rewards = [0.0, 1.0]
[grid]
length = [3]
lam = [0.5]
"""


def test_time_inhomogeneous_and_logit_chains_build_through_the_constructors(x64):
    import json

    import jax
    import numpy as np

    import jaxalign

    c = parse(INHOMOGENEOUS)
    assert [s.length for s in c.models] == [3, 3, None]
    direct = [
        jaxalign.MarkovLM.from_probs([0.6, 0.4], [[[0.9, 0.1], [0.3, 0.7]],
                                                  [[0.5, 0.5], [0.2, 0.8]]], length=3),
        jaxalign.MarkovLM.from_logits([0.0, 1.0], [[[2.0, 0.0], [0.0, 1.0]],
                                                   [[0.0, 0.5], [1.5, 0.0]]], length=3),
        jaxalign.MarkovLM.from_logits([0.0, 1.0], [[2.0, 0.0], [0.0, 1.0]], length=3),
    ]
    for spec, want in zip(c.models, direct, strict=True):
        built, _ = spec.build(3)
        assert not built.is_homogeneous if spec.length else built.is_homogeneous
        for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stored = json.loads(json.dumps(c.to_dict()))["models"]
    assert tuple(cfg.ModelSpec.from_dict(m) for m in stored) == c.models


@pytest.mark.parametrize(
    "change, key, allowed",
    [
        # wrong rank: a vector, a rank-4 array, an empty list
        (("trans = [[[0.9, 0.1], [0.3, 0.7]],", "trans = [[[[0.9, 0.1], [0.3, 0.7]]],"),
         "model[0].markov.trans", "a list of n - 1 such matrices"),
        (("trans_logits = [[2.0, 0.0], [0.0, 1.0]]", "trans_logits = [2.0, 0.0]"),
         "model[2].markov.trans_logits", "K x K matrix with K = 2 from init_logits"),
        (("trans_logits = [[2.0, 0.0], [0.0, 1.0]]", "trans_logits = []"),
         "model[2].markov.trans_logits", "K x K matrix"),
        # a step whose matrix has another K, or is not square
        (("[[0.5, 0.5], [0.2, 0.8]]]", "[[0.5, 0.4, 0.1], [0.2, 0.7, 0.1], "
          "[0.2, 0.7, 0.1]]]"), "model[0].markov.trans[1]", "K = 2 from init"),
        (("[[0.5, 0.5], [0.2, 0.8]]]", "[[0.5, 0.5], [0.2, 0.8, 0.0]]]"),
         "model[0].markov.trans[1][1]", "square"),
        (("[[0.5, 0.5], [0.2, 0.8]]]", "[0.5, 0.5]]"),
         "model[0].markov.trans[1]", "one per step"),
        # rows not summing to 1 in one step (the chain's own check)
        (("[[0.5, 0.5], [0.2, 0.8]]]", "[[0.5, 0.5], [0.2, 0.7]]]"),
         "model[0].markov", "trans rows must sum to 1"),
        (("init_logits = [0.0, 1.0], trans_logits = [[[",
          "init_logits = [0.0, 1.0, 2.0], trans_logits = [[["),
         "model[1].markov.trans_logits[0]", "K = 3 from init_logits"),
        # the number of steps against the grid's lengths
        (("length = [3]", "length = [4]"), "model[0].markov.trans",
         "grid.length = [3]"),
        (("length = [3]", "length = [3, 5]"), "model[0].markov.trans",
         "grid.length = [3]"),
        (("init = [0.6, 0.4], trans", "init = [0.6, 0.4], trans_logits"),
         "model[0].markov.trans_logits", "keys of the 'init' form"),
    ],
)
def test_bad_time_inhomogeneous_chain_names_the_key(change, key, allowed):
    _refused(INHOMOGENEOUS, change, key, allowed)


NEG_INF = """
methods = ["tilted"]
[[model]]
name = "chain"
markov = { init_logits = [0.0, -inf, 1.0], trans_logits = [[0.0, -inf, 1.0],
                                                            [0.5, 0.0, -inf],
                                                            [-inf, 2.0, 0.0]] }
rewards = [0.0, 1.0, 2.0]
[[model]]
name = "tokens"
logits = [0.0, -inf, 1.0]
rewards = [0.0, 1.0, 2.0]
[grid]
length = [3]
lam = [0.5]
"""


def test_logits_take_minus_inf_as_zero_mass(x64):
    # TOML's -inf in logits is a zero-probability token or transition, as in the
    # constructors (it was refused as "finite numbers"); the run record keeps it.
    import json

    import jax
    import numpy as np

    import jaxalign

    c = parse(NEG_INF)
    inf = -np.inf
    direct = [
        jaxalign.MarkovLM.from_logits(
            [0.0, inf, 1.0], [[0.0, inf, 1.0], [0.5, 0.0, inf], [inf, 2.0, 0.0]],
            length=3),
        jaxalign.MemorylessLM.from_logits([0.0, inf, 1.0], length=3),
    ]
    for spec, want in zip(c.models, direct, strict=True):
        built, _ = spec.build(3)
        for a, b in zip(jax.tree.leaves(built), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    chain = c.models[0].build(3)[0]
    zero = np.asarray(chain.trans_probs)[[0, 1, 2], [1, 2, 0]]
    np.testing.assert_array_equal(zero, 0.0)
    assert np.asarray(c.models[1].build(3)[0].probs)[1] == 0.0
    stored = json.loads(json.dumps(c.to_dict()))["models"]
    assert tuple(cfg.ModelSpec.from_dict(m) for m in stored) == c.models


@pytest.mark.parametrize(
    ("change", "key", "allowed"),
    [
        (("[-inf, 2.0, 0.0]]", "[-inf, -inf, -inf]]"),
         "model[0].markov.trans_logits[2]", "at least one of them finite"),
        (("init_logits = [0.0, -inf, 1.0]", "init_logits = [0.0, inf, 1.0]"),
         "model[0].markov.init_logits", "finite numbers or -inf"),
        (("logits = [0.0, -inf, 1.0]\n", "logits = [-inf, -inf, -inf]\n"),
         "model[1].logits", "at least one of them finite"),
        (("rewards = [0.0, 1.0, 2.0]", "rewards = [0.0, -inf, 2.0]"),
         "model[0].rewards", "finite numbers"),
    ],
)
def test_minus_inf_only_in_logits(change, key, allowed):
    _refused(NEG_INF, change, key, allowed)
