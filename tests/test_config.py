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
