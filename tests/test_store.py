"""The run directory: config, environment, tidy CSV, resume journal."""

import csv
import json

import pytest

from jaxalign.store import RunStore, columns, read_results

CONFIG = {"name": "t", "seed": 1, "out": "x"}
ENV = {"jax": "test"}


def rows(tag, value):
    return [
        {
            "point": tag,
            "model": "m",
            "length": 4,
            "method": "tilted",
            "lam": 0.5,
            "quantity": q,
            "mc_mean": value,
            "mc_stderr": 0.1,
            "mc_count": 8,
            "exact": 1 / 3,
            "asymptotic": None,
        }
        for q in ("reward_per_token", "kl_per_token")
    ]


def test_write_read_roundtrip(tmp_path):
    store = RunStore(tmp_path / "run", CONFIG, ENV, resume=False)
    store.append(rows("a", 0.1 + 0.2), "a")
    store.append(rows("b", 2.5), "b")
    got = read_results(tmp_path / "run")
    assert len(got) == 4
    assert got[0]["mc_mean"] == 0.1 + 0.2  # repr round-trips exactly
    assert got[0]["exact"] == 1 / 3 and got[0]["asymptotic"] is None
    assert got[0]["length"] == 4 and got[0]["mc_count"] == 8
    with open(tmp_path / "run" / "results.csv") as f:
        assert next(csv.reader(f)) == list(columns())
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == CONFIG
    assert json.loads((tmp_path / "run" / "environment.json").read_text()) == ENV


def test_refuses_to_overwrite_and_checks_resume(tmp_path):
    store = RunStore(tmp_path / "run", CONFIG, ENV, resume=False)
    store.append(rows("a", 1.0), "a")
    with pytest.raises(ValueError, match="already holds results"):
        RunStore(tmp_path / "run", CONFIG, ENV, resume=False)
    with pytest.raises(ValueError, match="config differs"):
        RunStore(tmp_path / "run", dict(CONFIG, seed=2), ENV, resume=True)
    with pytest.raises(ValueError, match="no run to resume"):
        RunStore(tmp_path / "other", CONFIG, ENV, resume=True)
    # The output directory may move.
    assert RunStore(tmp_path / "run", dict(CONFIG, out="y"), ENV, resume=True).done == {
        "a"
    }


def test_resume_drops_torn_writes(tmp_path):
    run = tmp_path / "run"
    store = RunStore(run, CONFIG, ENV, resume=False)
    store.append(rows("a", 1.0), "a")
    # A kill after point b's rows reached the file but before its journal entry, and a
    # torn half-line of point c.
    with open(run / "results.csv", "a") as f:
        f.write("b,m,4,tilted,,0.5,,,,,,reward_per_token,1.0,0.1,8,,\n")
        f.write("c,m,4,til")
    with open(run / "points_done.txt", "a") as f:
        f.write("b-partial")
    resumed = RunStore(run, CONFIG, ENV, resume=True)
    assert resumed.done == {"a"}
    assert [r["point"] for r in read_results(run)] == ["a", "a"]
    resumed.append(rows("b", 2.0), "b")
    assert [r["point"] for r in read_results(run)] == ["a", "a", "b", "b"]
    assert (run / "points_done.txt").read_text() == "a\nb\n"


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not writable"):
        RunStore(blocker / "run", CONFIG, ENV, resume=False)


def test_resume_warns_when_the_jaxalign_version_changed(tmp_path, recwarn):
    RunStore(tmp_path / "run", CONFIG, dict(ENV, jaxalign="0.1.0"), resume=False)
    RunStore(tmp_path / "run", CONFIG, dict(ENV, jaxalign="0.1.0"), resume=True)
    assert not [w for w in recwarn if "jaxalign" in str(w.message)]
    with pytest.warns(UserWarning, match="started with jaxalign 0.1.0 under 0.2.0"):
        RunStore(tmp_path / "run", CONFIG, dict(ENV, jaxalign="0.2.0"), resume=True)
