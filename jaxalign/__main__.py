"""The ``jaxalign`` command (console script and ``python -m jaxalign``).

A Ctrl-C at any moment after the interpreter starts prints one line and exits
with 130.  While NumPy, JAX and the CLI are being imported, a Ctrl-C is only
recorded and acted on once the imports finish: interrupting the initialisation of
their native extensions crashed the process (exit -6 or -11) or surfaced as an
``ImportError`` traceback.

Once the command has returned, every object is moved out of the garbage
collector's sight (``gc.freeze``): the interpreter's last collections at exit
walked the whole of JAX's object graph, 0.2-0.25 s of a cached
``jaxalign theory`` (1.5 s), for nothing (the process is ending; files are
closed and standard streams flushed as before, and exit handlers still run).
"""

import gc
import signal
import sys


def main() -> int:
    """Run :func:`jaxalign.cli.main` on ``sys.argv[1:]``; return the exit code."""
    interrupted = []
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    argv = sys.argv[1:]
    light = not argv or argv[0] == "list" or {"-h", "--help"} & set(argv)
    try:
        if not light:  # the slow, native part of every command that computes
            import jax  # noqa: F401

        from jaxalign.cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print("jaxalign: interrupted", file=sys.stderr)
        return 130
    code = cli_main()
    gc.freeze()  # a fast exit (module docstring)
    return code


if __name__ == "__main__":
    sys.exit(main())
