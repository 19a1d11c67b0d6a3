"""Compiled programs kept on disk between processes: the CLI's calculator.

JAX's persistent compilation cache keeps XLA's output, but every new process still
traces and lowers a program before it can look it up: for ``jaxalign theory`` that
was 0.6-0.8 s of a 2 s cached run.  :func:`call` keeps the compiled executable
itself (``jax.experimental.serialize_executable``) in a directory the CLI turns on
(``$XDG_CACHE_HOME/jaxalign/programs``), so a second run loads and runs it.

A stored program is used only when everything that could change it is the same:
its name and static arguments, the arguments' tree, shapes and dtypes, the versions
of JAX and jaxlib, ``jax_enable_x64``, the device, ``XLA_FLAGS`` and a digest of
every jaxalign source file, all hashed into the file's name.  A file that cannot
be loaded (truncated, from another build) is removed and the program compiled
again; files are written to a temporary name and renamed, so a concurrent reader
never sees half of one.  With no directory set, :func:`call` is the jitted call.

An executable that JAX loaded from its persistent compilation cache cannot be
serialised again (XLA's CPU client then writes one that loads but fails on its first
run), so the CLI does not turn that cache on for the commands that keep programs
here, and a program compiled while it is on is stored only once a load of the
written form has reproduced its output.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign._types import _light_options

_directory: str | None = None


def use_directory(path: str | None) -> None:
    """Keep compiled programs in ``path`` (created when first written), or stop
    (``None``)."""
    global _directory
    _directory = path


@functools.cache
def _source_digest() -> str:
    """sha256 of every ``.py`` file of the package (names and contents)."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _key(name: str, args: tuple, static: dict) -> str:
    import jaxlib

    leaves, tree = jax.tree.flatten(args)
    device = jax.devices()[0]
    parts = [
        name, sorted((k, repr(v)) for k, v in static.items()), str(tree),
        [(list(jnp.shape(x)), str(jnp.result_type(x))) for x in leaves],
        jax.__version__, jaxlib.__version__, bool(jax.config.jax_enable_x64),
        device.platform, device.device_kind, os.environ.get("XLA_FLAGS", ""),
        _source_digest(),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:40]


def _executable(payload: bytes, keys: list, args: tuple):
    from jax.experimental import serialize_executable

    in_tree = jax.tree.structure((args, {}))
    out_tree = jax.tree.structure(dict.fromkeys(keys, 0))
    return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)


def _run_stored(path: pathlib.Path, args: tuple) -> dict:
    with open(path, "rb") as file:
        keys = json.loads(file.readline())
        payload = file.read()
    return jax.block_until_ready(_executable(payload, keys, args)(*args))


def _write(path: pathlib.Path, keys: list, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(json.dumps(keys).encode() + b"\n" + payload)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def call(fn, name: str, args: tuple, **static):
    """``fn(*args, **static)`` for a :func:`jaxalign._types.light_jit` function
    ``fn`` that returns a dict of arrays, with the program kept on disk when a
    directory is set (see the module docstring).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxalign._types import light_jit
      >>> f = light_jit(lambda x, *, k: {"y": x * k})
      >>> call(f, "doc.example", (jnp.ones(2),), k=3)["y"].tolist()
      [3.0, 3.0]
    """
    if _directory is None:
        return fn(*args, **static)
    from jax.experimental import serialize_executable

    path = pathlib.Path(_directory) / f"{name}-{_key(name, args, static)}.bin"
    if path.exists():
        try:
            return _run_stored(path, args)
        except Exception:  # a stale or damaged file: compile it again below
            path.unlink(missing_ok=True)
    body = functools.partial(fn.__wrapped__, **static)
    compiled = jax.jit(body, compiler_options=_light_options()).lower(*args).compile()
    out = jax.device_get(compiled(*args))
    keys = sorted(out)
    payload, _, _ = serialize_executable.serialize(compiled)
    if jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache:
        # The executable may come from JAX's persistent cache, and XLA cannot
        # serialise such an executable again (it loads, then fails on its first
        # run): keep it only if it reproduces this run.
        try:
            again = jax.device_get(_executable(payload, keys, args)(*args))
        except Exception:
            return out
        if not _same(again, out):
            return out
    try:
        _write(path, keys, payload)
    except OSError:  # a read-only or full disk: the result stands
        pass
    return out
