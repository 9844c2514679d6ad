"""The ``caopd`` command line (entry point ``caopd = caopd.cli:main``; without it,
``python -m caopd.cli``).

Subcommands:

``caopd evaluate PREDICTIONS --task T [--out metrics.json]``
    Score a file of model responses and print the calibration metrics as JSON
    (:mod:`caopd.cli.evaluate`).
``caopd checks [INDEX_DIR] [--base V] [--sdft V] [--caopd V]``
    The paper's five checks on a finished run (:mod:`caopd.checks`); exit status 0 when all hold.
``caopd greedy-reading [INDEX_DIR] [--variant V] [--sdft V]``
    What greedy decoding reads from each arith level's targets
    (:mod:`caopd.diagnostics.arith_greedy_reading`).
``caopd work-agreement [INDEX_DIR] [--variants V ...]``
    Whether arith answers follow their own work line (:mod:`caopd.diagnostics.arith_work_agreement`).
``caopd seed-study --seeds S ... --out DIR``
    The whole pipeline at several seeds, the checks across them (:mod:`caopd.diagnostics.seed_study`).
``caopd track [--results results] [--uri URI] [--experiment caopd]``
    Log into MLflow the records of artifacts whose jobs ran while the tracking store was
    unreachable, and the variant runs the indexes lack (:mod:`caopd.ingest`); exit status 2 when
    an artifact does not verify or the store cannot be used.
``caopd memory --configfile X [--processes N] [--gpu-memory-gb G] [--model DIR]``
    The per-GPU memory estimate of every training variant of X (:mod:`caopd.memory_report`).

``caopd COMMAND --help`` gives each one's options. Adding a subcommand: write a function
``add_<name>(subparsers)`` that registers its parser with ``set_defaults(handler=...)`` (a
function ``args -> exit status``) and append it to :data:`SUBCOMMANDS`. Handlers import what
they run, so ``caopd --help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from caopd.cli.evaluate import add_evaluate
from caopd.cli.reports import add_checks, add_greedy_reading, add_seed_study, add_work_agreement

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def add_track(subparsers: argparse._SubParsersAction) -> None:
    from caopd.ingest import add_subcommand

    add_subcommand(subparsers)


def add_memory(subparsers: argparse._SubParsersAction) -> None:
    from caopd.memory_report import add_subcommand

    add_subcommand(subparsers)


#: Each entry registers one subcommand on the ``caopd`` parser, in the order ``--help`` lists them.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_evaluate, add_checks, add_greedy_reading, add_work_agreement, add_seed_study, add_track, add_memory,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``caopd`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="caopd", description="CaOPD command line")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``caopd`` command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
