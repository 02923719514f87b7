"""Command line: parses arguments, calls one function per command, prints.

No logic lives here. Heavy imports (torch, transformers, google-cloud-storage) happen inside
the handlers so that ``rmeval --help`` stays fast. Each command has a ``_add_<name>`` that
declares its arguments and a ``_run_<name>`` that calls the stage module.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from rmeval import __version__
from rmeval.errors import RmevalError

log = logging.getLogger("rmeval")

Handler = Callable[[argparse.Namespace], int]


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Third-party libraries speak only on errors unless -v: expected failures must stay
    # one line (google-auth, for one, logs its own warning before raising).
    root.setLevel(logging.ERROR if not verbose else logging.DEBUG)
    logging.getLogger("rmeval").setLevel(level)


def _print(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------- storage (ls)


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ls", help="list objects under a local dir, file:// or gs:// URI")
    p.add_argument("uri", help="directory or gs://bucket/prefix")
    p.add_argument(
        "--match", default=None, help="glob on the object's base name, e.g. 'streaming_params*'"
    )
    p.set_defaults(handler=_run_ls)


def _run_ls(args: argparse.Namespace) -> int:
    from rmeval import storage

    n = 0
    for obj in storage.list_objects(args.uri, match=args.match):
        _print(f"{obj.size:>14}  {obj.updated.isoformat() if obj.updated else '-':<32}  {obj.uri}")
        n += 1
    log.info("%d object(s)", n)
    return 0


# --------------------------------------------------------------------------- commands
# Each stage adds its _add_/_run_ pair above this line and registers it in COMMANDS.

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_ls,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rmeval",
        description="Turn EasyLM reward-model checkpoints into Hugging Face models, score them "
        "on RewardBench, and collect the regressor table.",
    )
    parser.add_argument("--version", action="version", version=f"rmeval {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


# Commands that reach GCS / Beaker from inside a task: for them a GOOGLE_SERVICE_ACCOUNT
# secret becomes Application Default Credentials for the run (rmeval/credentials.py).
CREDENTIAL_COMMANDS = frozenset({"run-one", "launch", "collect"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on usage errors
    _setup_logging(args.verbose)
    try:
        if args.command in CREDENTIAL_COMMANDS:
            from rmeval import credentials

            with credentials.google_from_env():
                return int(args.handler(args) or 0)
        return int(args.handler(args) or 0)
    except RmevalError as exc:
        print(f"rmeval: error: {exc}", file=sys.stderr, flush=True)
        if args.verbose:
            log.debug("traceback", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rmeval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
