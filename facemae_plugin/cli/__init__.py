"""``facemae <verb>``: the command line, one module per family of verbs (each verb's options beside
the function that runs it).

Each verb prints its details, then one summary line; with ``--json`` a JSON
object follows on the last line. Bad input ends with one ``error:`` line on
stderr and exit status 2 (``FACEMAE_DEBUG=1`` shows the traceback instead).
"""
import json
import os
import signal
import sys
import threading

from .. import __version__
from ..core.errors import FaceMAEError
from . import data, evaluation, publishing, training
from .options import Parser


VERBS = (*data.VERBS, *training.VERBS, *evaluation.VERBS, *publishing.VERBS)


def build_parser():
    parser = Parser(
        prog="facemae",
        description="FaceMAE privacy-preserving face datasets for InsightFace arcface_torch.",
    )
    parser.add_argument("--version", action="version", version=f"facemae-plugin {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for add_verb in VERBS:
        add_verb(verbs)
    return parser


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given, for the records a verb writes
    # SIGTERM (kill, docker stop, a scheduler's time limit) ends the command like Ctrl-C: cleanup
    # runs, worker pools are shut down and temp files removed, instead of leaving orphans behind.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args):
    try:
        summary, result = args.run(args)
    except (FaceMAEError, OSError) as exc:  # bad input; anything else is a bug and keeps its traceback
        if os.environ.get("FACEMAE_DEBUG"):
            raise
        print(f"facemae {args.verb}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    # One write: under torchrun every rank shares stdout, and a single short write to a pipe is
    # never interleaved with another process's.
    text = summary + "\n" + (json.dumps(result, default=str) + "\n" if args.json else "")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def _one_line(exc):
    """The error's message on one line; for an error raised in a DataLoader worker, the worker's own."""
    text = str(exc)
    if "Original Traceback" in text:  # torch re-raises worker errors with the worker's traceback inside
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


def run_as_script(verb):
    """Entry point of the thin scripts in ``converters/``: ``facemae VERB`` with the script's arguments."""
    sys.exit(main([verb, *sys.argv[1:]]))
