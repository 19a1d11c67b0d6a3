"""Command-line interface: ``jaxalign <command> [options]``.

Adding a command takes one function pair and one line::

    def _add_sweep(parser):            # declare the options on the sub-parser
        parser.add_argument("--config", required=True)

    def _run_sweep(args) -> int:       # do the work, print, return the exit code
        ...
        return 0

    COMMANDS.append(Command("sweep", "run a grid", _add_sweep, _run_sweep))

Bad input is reported by raising ``ValueError`` (library validation already does):
:func:`main` prints it as one line ``jaxalign: error: ...`` on stderr and returns 2,
never a traceback.  Argument-parsing errors take the same path.  Negative numbers
and lists that start with one (``--rewards -1,0,1``) are accepted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["Command", "COMMANDS", "build_parser", "float_list", "int_in", "main"]


class Command(NamedTuple):
    """One sub-command: ``jaxalign <name> ...``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # What it keeps between runs under $XDG_CACHE_HOME/jaxalign: "xla" (JAX's
    # persistent compilation cache), "programs" (whole executables, see
    # jaxalign._programs: no tracing either), or None (it runs no JAX).
    cache: str | None = "xla"


_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d|inf(inity)?$)", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and exiting, and reads
    an argument that starts like a negative number as a value.

    argparse decides whether ``-1,0,1`` is an option with the parser's
    ``_negative_number_matcher``; its default accepts only one plain number
    (``-1``, ``-.5``).  Ours accepts anything that starts with one (comma lists,
    exponents) and ``-inf``, so ``--rewards -1,0,1`` and ``--lam -inf`` parse like
    ``--rewards=-1,0,1``.  No option of ours looks like a number, so nothing is
    shadowed.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str):
        raise ValueError(message)


# -- parsing helpers (shared by commands) -------------------------------------------


def float_list(text: str, name: str) -> list[float]:
    """Parse ``"0.5,0.3,0.2"`` into floats; ``ValueError`` naming the option."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise ValueError(
            f"{name} must be a comma-separated list of numbers, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def int_in(low: int, high: int, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[low, high]``, else a message with the
    value and the range (``why``: where the bound comes from); argparse names the
    option."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer in [{low}, {_fmt_int(high)}]"
                f"{f' ({why})' if why else ''}, got {text!r}")
        return value

    return parse


def _fmt_int(value: int) -> str:
    """Large bounds as powers of two (``2**63 - 1``), others in full."""
    for k in (31, 32, 63):
        if value in (2**k, 2**k - 1):
            return f"2**{k}" + (" - 1" if value == 2**k - 1 else "")
    return str(value)


def _json_safe(value: Any) -> Any:
    """Floats that JSON cannot hold (inf, nan) become the strings "inf", "nan"."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.10g}"
    if isinstance(value, list):
        return "  ".join(_fmt(v) for v in value)
    return str(value)


# -- theory ---------------------------------------------------------------------------

# The CLI computes in float64, where a length is an int64.
_MAX_LENGTH = 2**63 - 1


def _add_model(parser: argparse.ArgumentParser, rewards_help: str) -> None:
    parser.add_argument("--probs", required=True,
                        help="token probabilities p, comma-separated (sum to 1)")
    parser.add_argument("--rewards", required=True, help=rewards_help)
    parser.add_argument("--length", required=True,
                        type=int_in(1, _MAX_LENGTH, "an int64"),
                        help="sequence length n (an integer >= 1)")


def _model(args: argparse.Namespace):
    """The float64 model and reward of --probs, --rewards, --length (under x64)."""
    import numpy as np

    from jaxalign.models import LinearReward, MemorylessLM

    probs = np.asarray(float_list(args.probs, "--probs"), np.float64)
    rewards = np.asarray(float_list(args.rewards, "--rewards"), np.float64)
    return MemorylessLM.from_probs(probs, length=args.length), LinearReward(rewards)


def _add_theory(parser: argparse.ArgumentParser) -> None:
    _add_model(parser, "per-token rewards r, comma-separated")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--lam", type=float, help="tilt lambda (inverse temperature)")
    which.add_argument("--kl", type=float, metavar="BUDGET",
                       help="sequence-level KL budget; solves for lambda")
    parser.add_argument("--order", type=int_in(1, 2**31 - 1), default=4,
                        help="number of cumulants to print (default 4; at most "
                             "jaxalign.theory.cumulants' limit, 20)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")


def _theory_table(rep: dict[str, Any]) -> str:
    n = rep["length"]
    rows: list[tuple[str, Any, str]] = []

    def section(title):
        rows.append((f"-- {title}", None, ""))

    def row(label, value, note=""):
        rows.append((label, value, note))

    section(f"model: K = {rep['num_tokens']} tokens, length n = {n} (float64)")
    row("token probabilities p", rep["probs"])
    row("token rewards r", rep["rewards"])
    section("tilted policy Phi_lam = p_lam^n (the KL-optimal policy)")
    if rep["kl_budget"] is not None:
        row("KL budget", rep["kl_budget"], "sequence level, nats")
    row("lam", rep["lam"], "solved from the budget" if rep["kl_budget"] is not None
        else "given")
    row("beta = 1/lam", rep["beta"], "KL-penalty coefficient")
    row("log-MGF Lambda(lam)", rep["log_mgf"], "per token")
    row(f"cumulants k1..k{len(rep['cumulants'])}", rep["cumulants"])
    rows.append(("", "", "(per token under p_lam; n x these for R)"))
    section("divergences (sequence level, nats)")
    row("KL(Phi_lam || P)", rep["kl"], f"max {_fmt(rep['max_kl'])} = -n log p(A_max)")
    row("KL(P || Phi_lam)", rep["reverse_kl"])
    row("Jeffreys J", rep["jeffreys"], "= lam x gain")
    section("reward R = sum_i r(y_i)")
    row("E_P[R]", rep["base_expected_reward"], "base model")
    row("E_Phi[R]", rep["expected_reward"], "= n Lambda'(lam)")
    row("gain E_Phi[R] - E_P[R]", rep["reward_gain"], "covariance form")
    if "jeffreys_gain" in rep:
        row("gain as J / lam", rep["jeffreys_gain"], "Jeffreys identity")
    row("optimal E[R] at this KL", rep["optimal_reward"], "KL-constrained frontier")
    row("rate I_0(E_Phi[R]/n)", rep["rate_at_aligned_mean"],
        "per token; = KL/n for lam >= 0")
    section("best-of-N with log N = KL (Yang et al. asymptotics)")
    row("log N", rep["best_of_n_log_num_candidates"])
    row("KL bound log N - (N-1)/N", rep["best_of_n_kl_bound"], "classical BoN bound")
    row("asymptotic BoN E[R]", rep["best_of_n_asymptotic_reward"],
        "n x*, I_0(x*) = KL/n")
    section("bounds")
    row("Hoeffding variance", rep["hoeffding_variance"], "(r_max - r_min)^2 / 4")
    row("sub-Gaussian gain bound", rep["subgaussian_bound"],
        "sqrt(2 n sigma^2 KL) >= gain")
    width = max(len(label) for label, value, _ in rows if value is not None) + 2
    lines = []
    for label, value, note in rows:
        if value is None:
            lines.append(label)
            continue
        text = f"  {label:<{width}}{_fmt(value)}" if label else " " * (width + 2)
        lines.append(f"{text:<{width + 24}}  {note}".rstrip() if note else text)
    return "\n".join(lines)


def _run_theory(args: argparse.Namespace) -> int:
    import jax

    from jaxalign import theory

    if args.lam is not None and math.isnan(args.lam):
        raise ValueError("--lam must be a number, got nan")
    if args.kl is not None and not args.kl >= 0:
        raise ValueError(f"--kl must be a budget >= 0, got {args.kl}")
    with jax.enable_x64(True):
        lm, reward = _model(args)
        rep = theory.report(lm, reward, lam=args.lam, kl_budget=args.kl,
                            order=args.order)
    if args.json:
        print(json.dumps(_json_safe(rep), allow_nan=False))
    else:
        print(_theory_table(rep))
    return 0


# -- sweep, list, plot -----------------------------------------------------------------


def _add_sweep(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?",
                        help="a TOML sweep file or the name of an embedded example "
                             "(`jaxalign list`); default: yang2024_equivalence")
    parser.add_argument("--out", help="run directory (default: the config's `out`, "
                                      "else runs/<name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar and no summary table")
    parser.add_argument("--max-tokens", type=float, metavar="TOKENS",
                        help="token-level work allowed per point (default 2**33 "
                             "token-equivalents, about a minute on 2 CPU cores; "
                             "inf: no limit)")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="multi-host: jax.distributed coordinator address")
    parser.add_argument("--num-processes", type=int,
                        help="multi-host: total number of processes")
    parser.add_argument("--process-id", type=int,
                        help="multi-host: this process's index")
    parser.add_argument("--distributed", action="store_true",
                        help="multi-host: jax.distributed.initialize() with "
                             "cluster auto-detection (SLURM, TPU pods, ...)")


def _load_sweep_config(name: str | None):
    from jaxalign import config as cfg

    examples = cfg.example_configs()
    name = name or "yang2024_equivalence"
    if name in examples:
        import tomllib

        return cfg.parse_config(tomllib.loads(examples[name]))
    if not os.path.exists(name):
        raise ValueError(
            f"config {name!r} is neither a file nor an embedded example "
            f"({', '.join(sorted(examples))})"
        )
    return cfg.load_config(name)


def _init_distributed(args: argparse.Namespace) -> None:
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(v is None for v in explicit):
        return
    if not args.distributed and any(v is None for v in explicit):
        raise ValueError(
            "--coordinator, --num-processes and --process-id go together "
            "(or use --distributed for auto-detection)"
        )
    import jax

    # Before anything touches a backend; only CPU computations read this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.distributed:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes,
                                   process_id=args.process_id)


def _run_sweep(args: argparse.Namespace) -> int:
    if args.max_tokens is not None and not args.max_tokens > 0:
        raise ValueError(f"--max-tokens must be > 0 (inf: no limit), got "
                         f"{args.max_tokens}")
    _init_distributed(args)  # must precede any JAX computation, config checks too
    from jaxalign import sample

    budget = None if args.max_tokens == math.inf else args.max_tokens
    with (contextlib.nullcontext() if args.max_tokens is None
          else sample.token_budget(budget)):
        return _sweep(args)


def _sweep(args: argparse.Namespace) -> int:
    config = _load_sweep_config(args.config)
    import jax

    from jaxalign import store, sweep

    progress = not args.quiet and sys.stderr.isatty()
    try:
        summary = sweep.run_sweep(config, args.out, resume=args.resume,
                                  progress=progress)
    except KeyboardInterrupt:
        out = args.out or config.out or f"runs/{config.name}"
        if os.path.exists(os.path.join(out, "config.json")):
            print(f"jaxalign: interrupted; finished points are saved in {out}; "
                  "continue with --resume", file=sys.stderr)
        else:  # before the run directory was written: nothing to resume
            print(f"jaxalign: interrupted before anything was saved (no run in "
                  f"{out}); start again without --resume", file=sys.stderr)
        return 130
    if jax.process_index() == 0 and not args.quiet:
        print(sweep.summary_table(store.read_results(summary.run_dir)))
        print(f"\n{summary.num_points} points ({summary.num_skipped} already done), "
              f"{summary.num_samples} samples in {summary.seconds:.1f} s -> "
              f"{summary.run_dir}/results.csv")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from jaxalign import config as cfg

    for name, text in cfg.example_configs().items():
        first = next((line[1:].strip() for line in text.splitlines()
                      if line.startswith("#")), "")
        print(f"{name:<24} {first}")
    return 0


def _add_plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by `jaxalign sweep`")


def _run_plot(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.run_dir, "results.csv")):
        raise ValueError(f"{args.run_dir!r} is not a run directory (no results.csv)")
    from jaxalign import plots

    for path in plots.plot_run(args.run_dir):
        print(path)
    return 0


# -- exact best-of-N table ---------------------------------------------------------


def _add_exact(parser: argparse.ArgumentParser) -> None:
    _add_model(parser, "per-token rewards r on a lattice, comma-separated")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--num-candidates", metavar="N,N,...",
                       help="best-of-N sizes, comma-separated integers >= 1")
    which.add_argument("--log-num-candidates", metavar="LOGN,...",
                       help="log N values (for N too large to write), >= 0")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of rows instead of a table")


def _run_exact(args: argparse.Namespace) -> int:
    import jax

    from jaxalign import exact

    if args.num_candidates is not None:
        counts = float_list(args.num_candidates, "--num-candidates")
        if any(c < 1 or c != int(c) for c in counts):
            raise ValueError(f"--num-candidates must be integers >= 1, got "
                             f"{args.num_candidates!r}")
        log_n = [math.log(int(c)) for c in counts]
    else:
        log_n = float_list(args.log_num_candidates, "--log-num-candidates")
        if any(not 0 <= v < math.inf for v in log_n):
            raise ValueError(f"--log-num-candidates must be finite and >= 0, got "
                             f"{args.log_num_candidates!r}")
    with jax.enable_x64(True):
        lm, reward = _model(args)
        rows = exact.best_of_n_report(lm, reward, log_n)
    if args.json:
        print(json.dumps(_json_safe(rows), allow_nan=False))
        return 0
    print(f"exact best-of-N, n = {args.length} (sequence level, nats); the tilted "
          "policy at the same KL is the frontier")
    head = (f"{'log N':>10} {'E_BoN[R]':>12} {'KL(BoN||P)':>12} {'log N-(N-1)/N':>14} "
            f"{'win rate':>10} {'E_tilt[R]':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['log_num_candidates']:>10.4g} {r['expected_reward']:>12.6g} "
              f"{r['kl']:>12.6g} {r['kl_bound']:>14.6g} {r['win_rate']:>10.6f} "
              f"{r['tilted_reward_at_same_kl']:>12.6g}")
    return 0


# -- KL-penalty gradients -----------------------------------------------------------


def _add_kl_gradients(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="TOML",
                        help="read the options below from a TOML file (keys probs, "
                             "trans, length, lam, rewards, q_probs, q_trans, clip, "
                             "clip_form, weighting; lists for vectors, lists of rows "
                             "for matrices, q_trans also a list of n - 1 matrices); "
                             "options on the command line win")
    parser.add_argument("--probs",
                        help="reference p: token probabilities (memoryless), or the "
                             "initial law with --trans; comma-separated, all > 0")
    parser.add_argument("--trans", metavar="ROWS",
                        help="reference p is a Markov chain with these transition "
                             "probabilities: rows separated by ';', entries by ','")
    parser.add_argument("--length",
                        type=int_in(1, 2**31 - 1, "an int32 scan length"),
                        help="sequence length n (an integer >= 1)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--lam", type=float,
                       help="q is the tilt q ∝ p e^(lam R) of p at lam, R the sum "
                            "of the per-token --rewards (for a chain p the exact "
                            "tilt: a time-varying chain, jaxalign.markov.tilt)")
    which.add_argument("--q-probs", metavar="PROBS",
                       help="q's token probabilities (memoryless) or initial law "
                            "(with --q-trans), all > 0")
    parser.add_argument("--rewards", help="per-token rewards r for --lam")
    parser.add_argument("--q-trans", metavar="ROWS",
                        help="q's transition probabilities (with --trans): one K x K "
                             "matrix (a homogeneous chain), or n - 1 of them "
                             "separated by '|' (time-varying: the t-th gives "
                             "q(y_(t+1) | y_t))")
    parser.add_argument("--clip", type=float,
                        help="clip range c >= 0 of the clipped ratio (default 0.2)")
    parser.add_argument("--clip-form", choices=_KLG_CLIP_FORMS,
                        help="clipped rows: 'clip' weighs a penalty x by the clipped "
                             "ratio, 'min' by PPO's pessimistic max(w x, clip(w) x) "
                             "(default clip)")
    parser.add_argument("--weighting", choices=_KLG_WEIGHTINGS,
                        help="which rows to print (default all)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")
    parser.add_argument("--plot", metavar="FILE",
                        help="also save the figure (jaxalign.plots."
                             "kl_penalty_gradients: cosine, relative bias and "
                             "variance per row, value variance vs n) to FILE "
                             "(.png, .pdf, .svg)")


_KLG_WEIGHTINGS = ("all", "on_policy", "ratio", "clipped")
_KLG_CLIP_FORMS = ("clip", "min")
_KLG_KEYS = {"probs": "vector", "trans": "matrix", "length": "int", "lam": "float",
             "rewards": "vector", "q_probs": "vector", "q_trans": "matrices",
             "clip": "float", "clip_form": "clip_form", "weighting": "weighting"}


def _toml_value(key: str, value: Any, kind: str, path: str) -> Any:
    """A TOML value in the form its command-line option takes."""
    where = f"config {path!r} key {key!r}"

    def number(x) -> float:
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise ValueError(f"{where} must hold numbers, got {x!r}")
        return float(x)

    if kind == "vector":
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where} must be a non-empty list of numbers, got "
                             f"{value!r}")
        return ",".join(repr(number(x)) for x in value)
    if kind == "matrices" and isinstance(value, list) and value and all(
            isinstance(m, list) and m and all(isinstance(r, list) for r in m)
            for m in value):  # n - 1 matrices: the steps joined by '|'
        return "|".join(_toml_value(key, m, "matrix", path) for m in value)
    if kind in ("matrix", "matrices"):
        if not isinstance(value, list) or not value or not all(
                isinstance(row, list) and row for row in value):
            raise ValueError(f"{where} must be a list of rows (lists of numbers)"
                             f"{' or of matrices' if kind == 'matrices' else ''}, "
                             f"got {value!r}")
        return ";".join(",".join(repr(number(x)) for x in row) for row in value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not (
                1 <= value <= 2**31 - 1):
            raise ValueError(f"{where} must be an integer in [1, 2**31 - 1], got "
                             f"{value!r}")
        return value
    if kind == "float":
        return number(value)
    allowed = _KLG_CLIP_FORMS if kind == "clip_form" else _KLG_WEIGHTINGS
    if value not in allowed:
        raise ValueError(f"{where} must be one of {allowed}, got {value!r}")
    return value


def _kl_gradient_options(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line from ``--config``, then the
    defaults; check that the model and the policy are given once."""
    import tomllib

    if args.config is not None:
        try:
            with open(args.config, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ValueError(f"cannot read --config {args.config!r}: "
                             f"{e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"--config {args.config!r} is not valid TOML: {e}"
                             ) from None
        unknown = sorted(set(data) - set(_KLG_KEYS))
        if unknown:
            raise ValueError(f"config {args.config!r} has unknown keys {unknown}; "
                             f"allowed: {sorted(_KLG_KEYS)}")
        for key, value in data.items():
            if getattr(args, key) is None:
                setattr(args, key, _toml_value(key, value, _KLG_KEYS[key],
                                               args.config))
    if args.probs is None or args.length is None:
        raise ValueError("the reference p needs --probs and --length (on the "
                         "command line or in --config)")
    if (args.lam is None) == (args.q_probs is None):
        raise ValueError("give exactly one of --lam (q a tilt of p) and --q-probs, "
                         "on the command line or in --config")
    args.clip = 0.2 if args.clip is None else args.clip
    args.clip_form = args.clip_form or "clip"
    args.weighting = args.weighting or "all"


def _matrix(text: str, name: str) -> list[list[float]]:
    return [float_list(row, name) for row in text.split(";")]


def _q_trans(text: str, k: int, length: int):
    """``--q-trans`` as ``(K, K)`` or, steps separated by ``'|'``, ``(n - 1, K, K)``
    transition probabilities, all > 0 (rows need not sum to 1: they are logits'
    exponentials)."""
    import numpy as np

    steps = [_matrix(step, "--q-trans") for step in text.split("|")]
    allowed = (f"K x K = {k} x {k} probabilities > 0, or n - 1 = {length - 1} such "
               f"matrices separated by '|' (a time-varying q)")
    if any(len(m) != k or any(len(row) != k for row in m) for m in steps) or (
            len(steps) > 1 and len(steps) != length - 1):
        raise ValueError(f"--q-trans must be {allowed}, got {len(steps)} matrices "
                         f"of shapes {[(len(m), len(m[0])) for m in steps]}")
    qt = np.asarray(steps if len(steps) > 1 else steps[0], np.float64)
    if not np.all(np.isfinite(qt) & (qt > 0)):
        raise ValueError(f"--q-trans must be {allowed}, got {text!r}")
    return qt


def _kl_gradient_models(args: argparse.Namespace):
    """``(params, p, description of q)`` in float64 (under x64)."""
    import numpy as np

    from jaxalign.markov import MarkovLM
    from jaxalign.models import MemorylessLM

    probs = np.asarray(float_list(args.probs, "--probs"), np.float64)
    k = probs.size
    if args.trans is None:
        if args.q_trans is not None:
            raise ValueError("--q-trans needs --trans (a Markov reference p)")
        p = MemorylessLM.from_probs(probs, length=args.length)
    else:
        trans = np.asarray(_matrix(args.trans, "--trans"), np.float64)
        if trans.shape != (k, k):
            raise ValueError(f"--trans must be K x K = {k} x {k} (K from --probs), "
                             f"got {trans.shape[0]} rows of {len(trans[0])}")
        p = MarkovLM.from_probs(probs, trans, length=args.length)
    if args.lam is not None:
        if not math.isfinite(args.lam):
            raise ValueError(f"--lam must be finite, got {args.lam}")
        if args.rewards is None:
            raise ValueError("--lam needs --rewards (q is the tilt of p)")
        r = np.asarray(float_list(args.rewards, "--rewards"), np.float64)
        if r.size != k:
            raise ValueError(f"--rewards must have K = {k} entries (K from --probs), "
                             f"got {r.size}")
        if not np.all(np.isfinite(r)):
            raise ValueError(f"--rewards must be finite, got {args.rewards!r}")
        if args.trans is None:
            return np.log(probs) + args.lam * r, p, f"tilt of p at lam = {args.lam:g}"
        from jaxalign.markov import tilt
        from jaxalign.models import LinearReward

        # The tilt of a chain is a time-varying chain: exact in that form only.
        q = tilt(p, LinearReward(r), args.lam)
        return ((q.log_init, q.log_trans), p,
                f"tilt of p at lam = {args.lam:g} (time-varying chain)")
    if args.rewards is not None:
        raise ValueError("--rewards goes with --lam, not --q-probs")
    q = np.asarray(float_list(args.q_probs, "--q-probs"), np.float64)
    if q.size != k or not np.all(q > 0):
        raise ValueError(f"--q-probs must be K = {k} probabilities > 0 (q is given "
                         f"by its logits log q), got {args.q_probs!r}")
    if args.trans is None:
        return np.log(q), p, "given by --q-probs"
    if args.q_trans is None:
        raise ValueError("a Markov p (--trans) needs --q-trans with --q-probs")
    qt = _q_trans(args.q_trans, k, args.length)
    varying = " (time-varying)" if qt.ndim == 3 else ""
    return (np.log(q), np.log(qt)), p, f"given by --q-probs and --q-trans{varying}"


def _save_kl_gradients_plot(path: str, summary, values) -> None:
    from jaxalign import plots

    fig = plots.kl_penalty_gradients(summary, values)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot write --plot {path!r}: {e}") from None


def _run_kl_gradients(args: argparse.Namespace) -> int:
    import jax

    from jaxalign import kl_gradients

    _kl_gradient_options(args)
    if not (math.isfinite(args.clip) and args.clip >= 0):
        raise ValueError(f"--clip must be a finite number >= 0, got {args.clip}")
    rows = tuple(i for i in kl_gradients.GRID
                 if args.weighting in ("all", i.weighting))
    with jax.enable_x64(True):
        params, p, q_text = _kl_gradient_models(args)
        s = kl_gradients.summary(params, p, clip=args.clip, implementations=rows,
                                 clip_form=args.clip_form)
        norm_qp = float(jax.numpy.linalg.norm(s.grad_kl_qp))
        norm_pq = float(jax.numpy.linalg.norm(s.grad_kl_pq))
        if args.plot is not None:
            _save_kl_gradients_plot(args.plot, s, kl_gradients.value_moments(
                params, p))
    kind = "Markov" if args.trans is not None else "memoryless"
    table = [{"implementation": impl.name, "gradient_of": s.divergence[j],
              "cosine": float(s.cosine[j]), "relative_bias": float(
                  s.relative_bias[j]), "variance": float(s.variance[j])}
             for j, impl in enumerate(s.implementations)]
    if args.json:
        print(json.dumps(_json_safe({
            "model": kind, "num_tokens": len(float_list(args.probs, "--probs")),
            "length": args.length, "q": q_text, "clip": args.clip,
            "clip_form": args.clip_form,
            "kl_qp": float(s.kl_qp), "kl_pq": float(s.kl_pq),
            "grad_kl_qp_norm": norm_qp, "grad_kl_pq_norm": norm_pq, "rows": table}),
            allow_nan=False))
        return 0
    print(f"KL-penalty gradients: {kind} p, n = {args.length}, q {q_text}; exact "
          f"(float64), at theta = theta_old, clip c = {args.clip:g} "
          f"({args.clip_form} form)")
    print(f"KL(q||p) = {_fmt(float(s.kl_qp))}  |grad KL(q||p)| = {_fmt(norm_qp)}  "
          f"KL(p||q) = {_fmt(float(s.kl_pq))}  |grad KL(p||q)| = {_fmt(norm_pq)}")
    head = (f"{'implementation':<34} {'gradient of':<22} {'cos':>8} "
            f"{'rel. bias':>10} {'var/sample':>12}")
    print(head)
    print("-" * len(head))
    for row in table:
        print(f"{row['implementation']:<34} {row['gradient_of']:<22} "
              f"{row['cosine']:>8.4f} {row['relative_bias']:>10.4f} "
              f"{row['variance']:>12.6g}")
    print("cos, rel. bias: against grad KL(q||p); var/sample: trace of the "
          "per-sample covariance (divide by the batch size)")
    return 0


# -- bench -------------------------------------------------------------------------


# The raw-PRNG comparison holds every uniform in memory (4 bytes each): 1 GiB at most.
_MAX_BENCH_TOKENS = 2**28


def _add_bench(parser: argparse.ArgumentParser) -> None:
    count = int_in(1, 2**31 - 1)
    parser.add_argument("--num-samples", type=count, default=256)
    parser.add_argument("--num-candidates", type=count, default=64)
    parser.add_argument("--length", type=count, default=256)
    parser.add_argument("--num-tokens", type=int_in(2, 2**24), default=16)


def _run_bench(args: argparse.Namespace) -> int:
    """Token-level best-of-N throughput against its own PRNG work, on this device."""
    import time

    import jax
    import jax.numpy as jnp

    from jaxalign import sample
    from jaxalign.models import LinearReward, MemorylessLM

    tokens = args.num_samples * args.num_candidates * args.length
    if tokens > _MAX_BENCH_TOKENS:
        raise ValueError(
            f"--num-samples x --num-candidates x --length must be at most 2**28 "
            f"tokens (the bench times 8 calls of that size), got {args.num_samples} "
            f"x {args.num_candidates} x {args.length} = {tokens}")
    lm = MemorylessLM.zipf(args.num_tokens, 1.0, length=args.length)
    reward = LinearReward(jnp.arange(args.num_tokens, dtype=jnp.float32))
    key = jax.random.key(0)

    def best(fn):
        fn().block_until_ready()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            fn().block_until_ready()
            times.append(time.perf_counter() - t)
        return min(times)

    sizes = (args.num_candidates, args.num_samples)
    t_bon = best(lambda: sample.best_of_n(key, lm, reward, *sizes).reward)
    # The sampler's own PRNG work: same program, keys and 32-bit words.
    t_draws = best(lambda: sample._best_of_n_draws_only(key, lm, reward, *sizes))
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}, PRNG "
          f"{jax.random.key_impl(key)}")
    print(f"best-of-N tokens/s {tokens / t_bon:.3g}; its PRNG draws alone (same "
          f"keys and words) words/s {tokens / t_draws:.3g}; share of time drawing "
          f"{t_draws / t_bon:.2f}")
    print("full comparison (NumPy, categorical): python benchmarks/bench_sampling.py")
    return 0


COMMANDS: list[Command] = [
    Command("theory", "closed-form quantities of the tilted (KL-optimal) policy",
            _add_theory, _run_theory, cache="programs"),
    Command("sweep", "run a sweep (default: the embedded Yang et al. equivalence)",
            _add_sweep, _run_sweep),
    Command("exact", "exact best-of-N table (any N) beside the KL-optimal frontier",
            _add_exact, _run_exact),
    Command("kl-gradients", "exact expected gradient and variance of every sampled "
            "KL penalty (k1/k2/k3, reward or loss, token or sequence, on/off policy)",
            _add_kl_gradients, _run_kl_gradients),
    Command("plot", "write the figures of a run directory (PNG and PDF)",
            _add_plot, _run_plot),
    Command("bench", "quick sampling throughput check on this device",
            _add_bench, _run_bench),
    Command("list", "list the embedded example sweep configs",
            lambda parser: None, _run_list, cache=None),
]


# -- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per entry of :data:`COMMANDS`."""
    parser = _Parser(prog="jaxalign",
                     description="Theory of LM alignment for memoryless models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for command in COMMANDS:
        child = sub.add_parser(command.name, help=command.help,
                               description=command.help)
        command.add_arguments(child)
        child.add_argument(
            "--no-cache", action="store_true",
            help="do not use the persistent compilation cache (also: "
                 f"{_NO_CACHE_ENV}=1)")
        child.set_defaults(_run=command.run, _cache=command.cache)
    return parser


_NO_CACHE_ENV = "JAXALIGN_NO_CACHE"


def compilation_cache_dir(environ=os.environ, kind: str = "xla") -> str:
    """Where the CLI keeps what it compiled: ``$XDG_CACHE_HOME/jaxalign/<kind>``
    (default ``~/.cache/jaxalign/<kind>``), ``kind`` ``"xla"`` for JAX's persistent
    compilation cache or ``"programs"`` for whole executables."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxalign", kind)


def _cache_target(args: argparse.Namespace, environ, configured: str | None):
    """The cache directory to turn on, or None: off with ``--no-cache`` or
    ``JAXALIGN_NO_CACHE=1``, for commands that run no JAX (``list``), and when the
    user configured JAX's own cache (``JAX_COMPILATION_CACHE_DIR``), which is left
    alone.  ``jaxalign theory`` keeps whole programs (``.../programs``), the other
    commands JAX's cache (``.../xla``)."""
    off = environ.get(_NO_CACHE_ENV, "") not in ("", "0")
    if off or args.no_cache or args._cache is None:
        return None
    if environ.get("JAX_COMPILATION_CACHE_DIR") or configured:
        return None
    return compilation_cache_dir(environ, args._cache)


def _use_compilation_cache(args: argparse.Namespace) -> None:
    """Turn on the command's cache (see :func:`_cache_target`), so a second
    ``jaxalign theory`` or a resumed sweep loads its programs instead of compiling
    them again.  JAX's cache stays off where whole programs are kept: XLA cannot
    serialise an executable that came from it (see :mod:`jaxalign._programs`)."""
    if _cache_target(args, os.environ, None) is None:
        return
    import jax

    target = _cache_target(args, os.environ, jax.config.jax_compilation_cache_dir)
    if target is None:
        return
    if args._cache == "programs":
        from jaxalign import _programs

        _programs.use_directory(target)
    else:
        jax.config.update("jax_compilation_cache_dir", target)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jaxalign`` with ``argv`` (default ``sys.argv[1:]``); return exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        _use_compilation_cache(args)
        return int(args._run(args))
    except ValueError as err:
        message = " ".join(str(err).split())  # always one line
        print(f"jaxalign: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's own handler
        print("jaxalign: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except BrokenPipeError:  # e.g. `jaxalign theory ... | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
