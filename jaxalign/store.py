"""Run directories: the resolved config, the environment, and a tidy results table.

A run directory holds

- ``config.json``: the resolved :class:`~jaxalign.config.SweepConfig`;
- ``environment.json``: jaxalign and JAX versions, device kind and count, PRNG
  implementation, x64, host;
- ``results.csv``: one row per (grid point, quantity) with the Monte Carlo mean,
  standard error and count, and the exact and asymptotic values where they exist;
- ``points_done.txt``: the tags of the completed points, appended after their rows
  reach the disk (the resume journal).

CSV rather than Parquet: it needs no dependency (Parquet would pull in pyarrow), it can
be appended to row by row and flushed after every grid point, so a killed sweep loses
at most the point in flight, and ``pandas.read_csv(run / "results.csv")`` loads it in
one line.  Floats are written with ``repr`` and round-trip exactly.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import warnings

__all__ = ["RunStore", "columns", "read_results"]

_POINT_COLUMNS = ("point", "model", "length", "method", "sampling")
_VALUE_COLUMNS = ("quantity", "mc_mean", "mc_stderr", "mc_count", "exact", "asymptotic")


def columns() -> tuple[str, ...]:
    """The ``results.csv`` columns: the point, the settings of every registered
    policy (:func:`jaxalign.policies.setting_names`), the quantity and its values."""
    from jaxalign import policies

    return _POINT_COLUMNS + policies.setting_names() + _VALUE_COLUMNS


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return str(value)


def _warn_if_version_changed(path: pathlib.Path, environment: dict) -> None:
    stored = json.loads(path.read_text()) if path.exists() else {}
    old, new = stored.get("jaxalign"), environment.get("jaxalign")
    if old is not None and old != new:
        warnings.warn(
            f"resuming a run started with jaxalign {old} under {new}: points of the "
            "two versions may come from different random streams (still exact in "
            "law, but the run is no longer bit-reproducible by one version)",
            stacklevel=3,
        )


class RunStore:
    """Appends results of a sweep to a run directory, and knows what is done.

    ``RunStore(path, config_dict, environment, resume=False)`` creates the directory;
    with ``resume=True`` it requires an existing run with the same config and
    reports the completed points in :attr:`done`.
    """

    def __init__(self, path, config: dict, environment: dict, *, resume: bool):
        self.path = pathlib.Path(path)
        self.results_path = self.path / "results.csv"
        self.journal_path = self.path / "points_done.txt"
        config_path = self.path / "config.json"
        if resume:
            if not config_path.exists():
                raise ValueError(
                    f"--resume: {str(self.path)!r} holds no run to resume "
                    "(config.json is missing)"
                )
            stored = json.loads(config_path.read_text())
            if _comparable(stored) != _comparable(config):
                raise ValueError(
                    f"--resume: the config differs from the one stored in "
                    f"{str(config_path)!r}; resume with the same config or use a "
                    "new output directory"
                )
            self.done = self._recover()
            with open(self.results_path, newline="") as f:
                self.columns = tuple(next(csv.reader(f)))
            _warn_if_version_changed(self.path / "environment.json", environment)
        else:
            if self.results_path.exists():
                raise ValueError(
                    f"output directory {str(self.path)!r} already holds results; "
                    "pass --resume to continue it or choose another --out"
                )
            self.columns = columns()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
                _write_json(config_path, config)
                with open(self.results_path, "w", newline="") as f:
                    csv.writer(f, lineterminator="\n").writerow(self.columns)
                self.journal_path.write_text("")
            except OSError as e:
                raise ValueError(
                    f"output directory {str(self.path)!r} is not writable: {e.strerror}"
                ) from None
            self.done = set()
        _write_json(self.path / "environment.json", environment)

    def _recover(self) -> set[str]:
        """Completed points from the journal; drop rows of a point cut off mid-write."""
        journal = self.journal_path.read_text() if self.journal_path.exists() else ""
        done = set(
            journal.splitlines()[:-1]
            if not journal.endswith("\n")
            else journal.splitlines()
        )
        raw = self.results_path.read_text()
        lines = raw.splitlines(keepends=True)
        header, body = lines[0], lines[1:]
        kept = [
            line
            for line in body
            if line.endswith("\n") and next(csv.reader([line]))[0] in done
        ]
        if len(kept) != len(body):
            tmp = self.results_path.with_suffix(".tmp")
            tmp.write_text(header + "".join(kept))
            os.replace(tmp, self.results_path)
        self.journal_path.write_text("".join(t + "\n" for t in sorted(done)))
        return done

    def append(self, rows: list[dict], point_tag: str) -> None:
        """Append the rows of one grid point, then journal the point as done.

        Each write is flushed to the OS before the next, so a killed process loses at
        most the point in flight.  No fsync: surviving power loss is not worth its
        cost per point (about 1 ms, 5% of a fast law-level sweep).
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for row in rows:
            unknown = set(row) - set(self.columns)
            if unknown:
                raise ValueError(
                    f"rows have columns {sorted(unknown)} that {self.results_path} "
                    "lacks (a policy registered after the run started?)")
            writer.writerow([_fmt(row.get(c)) for c in self.columns])
        for path, text in (
            (self.results_path, buf.getvalue()),
            (self.journal_path, point_tag + "\n"),
        ):
            with open(path, "a", newline="") as f:
                f.write(text)
                f.flush()
        self.done.add(point_tag)


def _comparable(config: dict) -> dict:
    # The output directory may move between runs; everything else must match.
    return {k: v for k, v in json.loads(json.dumps(config)).items() if k != "out"}


def _write_json(path: pathlib.Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_results(run_dir) -> list[dict]:
    """The result rows of a run, as dicts.

    Numbers are parsed to ``float``/``int``; empty cells become ``None``.  With pandas:
    ``pandas.read_csv(run_dir / "results.csv")``.
    """
    path = pathlib.Path(run_dir) / "results.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    ints = {"length", "num_candidates", "mc_count"}
    text = {"point", "model", "method", "sampling", "quantity"}
    out = []
    for r in rows:
        parsed = {}
        for k, v in r.items():
            if v == "":
                parsed[k] = None
            elif k in text:
                parsed[k] = v
            elif k in ints:
                parsed[k] = int(v)
            else:
                parsed[k] = float(v)
        out.append(parsed)
    return out
