"""The ``spafoundation`` command. Each subcommand lives in ``spafoundation.commands.<name>`` and exposes
``register(subparsers)``; modules named ``benchmark_<task>`` register under ``spafoundation benchmark``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading

from spafoundation import __version__
from spafoundation.errors import EnvironmentProblem, InputError

EXIT_BAD_INPUT = 2
EXIT_ENVIRONMENT = 3  # disk full, read-only or forbidden folder, an output another command is writing
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


def _command_modules():
    import spafoundation.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield info.name, importlib.import_module(f"spafoundation.commands.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spafoundation",
        description="Spatial gene expression from H&E histology with visual foundation models.",
    )
    parser.add_argument("--version", action="version", version=f"spafoundation {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    bench = sub.add_parser("benchmark", help="run a benchmark protocol and write its tables")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="TASK")
    bench_sub.required = True
    for name, module in _command_modules():
        module.register(bench_sub if name.startswith("benchmark_") else sub)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (``cluster``, ``fit-expression``), as ``spafoundation`` registers it."""
    module = importlib.import_module(f"spafoundation.commands.{name.replace('-', '_')}")
    holder = argparse.ArgumentParser(prog="spafoundation").add_subparsers()
    module.register(holder)
    return holder.choices[name]


# What the machine refuses, as opposed to a bug: one line naming the path, not a traceback.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so the same ``finally`` blocks that clean up after Ctrl-C remove
    the temporary files of the output being written."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _environment_message(e: OSError) -> str | None:
    """One line for an OSError the machine caused, None for any other."""
    if e.errno not in ENVIRONMENT_ERRNOS and "No space left" not in str(e):
        return None
    where = e.filename or ""
    reason = e.strerror or str(e)
    return f"{where}: {reason}" if where else reason


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for outputs that record their own command
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # anndata logs at INFO each string column it stores as categorical ("... storing 'section' as categorical"):
    # 23 such lines in `make demo` that say nothing about the user's run
    logging.getLogger("anndata").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    return call_command(args)


def call_command(args: argparse.Namespace, *extra) -> int:
    """Run a parsed command (``extra``: more arguments of its function, e.g. the dataset ``run`` read once) at its
    ``--precision``, under the output rule (utils/outputs.py), and turn bad input, environment errors, SIGTERM, an
    interrupt and a closed pipe into their exit codes and one line."""
    from spafoundation._settings import settings
    from spafoundation.io.downscaled import forget_warnings
    from spafoundation.utils.outputs import claim_output

    precision = getattr(args, "pipeline_precision", None)
    forget_warnings()  # a downscaled image is named once per command (each step of a run names its own)
    try:
        with (_sigterm_as_interrupt(), claim_output(args),
              settings.override(**({"precision": precision} if precision else {}))):  # this command's choice only
            code = int(args.func(args, *extra) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe must surface here, not at interpreter exit
        return code
    except BrokenPipeError:
        # `spafoundation info DATA | head -1`: the reader has gone; stop quietly. Point stdout at devnull so
        # Python's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except InputError as e:
        message = " ".join(str(e).split())  # one line, whatever the message holds (a YAML parser's report...)
        print(f"spafoundation: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except EnvironmentProblem as e:
        print(f"spafoundation: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except OSError as e:
        message = _environment_message(e)
        if message is None:
            raise
        print(f"spafoundation: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except Terminated:
        print("spafoundation: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("spafoundation: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
