"""Subcommands that read finished runs: ``caopd checks``, ``caopd greedy-reading``,
``caopd work-agreement`` and ``caopd seed-study`` (:mod:`caopd.cli` lists them).

Each parses its arguments, calls one function of :mod:`caopd.checks` or :mod:`caopd.diagnostics`
and prints what it returns; the modules import lazily, inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: where a run's variant indexes are, relative to the workflow's working directory
DEFAULT_INDEX = Path("results/index")


def _subparser(subparsers: argparse._SubParsersAction, name: str, handler, *, help: str, description: str,
               reads_index: bool = True) -> argparse.ArgumentParser:
    """Register ``caopd <name>`` running ``handler``; ``reads_index``: its first argument is the
    run's index directory."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(handler=handler)
    if reads_index:
        parser.add_argument("index_dir", nargs="?", type=Path, default=DEFAULT_INDEX,
                            help=f"the run's variant indexes (default {DEFAULT_INDEX})")
    return parser


def _role_arguments(parser: argparse.ArgumentParser) -> None:
    from caopd.checks import ROLES

    for role in ROLES:
        parser.add_argument(f"--{role}", default=role, help=f"variant in the role of {role!r} (default {role!r})")


def _role_names(args: argparse.Namespace) -> dict[str, str]:
    from caopd.checks import ROLES

    return {role: getattr(args, role) for role in ROLES}


def _run_checks(args: argparse.Namespace) -> int:
    from caopd.checks import checks_from_index, format_checks

    _, _, checks = checks_from_index(args.index_dir, names=_role_names(args))
    print(format_checks(checks), end="")
    return 0 if all(c.passed for c in checks) else 1


def add_checks(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers, "checks", _run_checks,
        help="the paper's five checks on a finished run (exit status 0 when all hold)",
        description="The paper's finding as five checks on the evaluations of the base, sdft and caopd "
                    "variants, read through the run's index (caopd.checks).",
    )
    _role_arguments(parser)


def _run_greedy_reading(args: argparse.Namespace) -> int:
    from caopd.diagnostics.arith_greedy_reading import report

    print(report(args.index_dir, args.variant, args.sdft))
    return 0


def add_greedy_reading(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers, "greedy-reading", _run_greedy_reading,
        help="arith: what greedy decoding reads from each level's training targets",
        description="The ideal level-conditional student of an arith run, read greedily, beside the "
                    "variant's decoded metrics (caopd.diagnostics.arith_greedy_reading).",
    )
    parser.add_argument("--variant", default="caopd", help="the CaOPD variant whose targets and answers to read")
    parser.add_argument("--sdft", default="sdft", help="the variant whose ECE and SPR set the thresholds")


def _run_work_agreement(args: argparse.Namespace) -> int:
    from caopd.diagnostics.arith_work_agreement import format_agreement, index_agreement

    print(format_agreement(index_agreement(args.index_dir, args.variants)))
    return 0


def add_work_agreement(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers, "work-agreement", _run_work_agreement,
        help="arith: does each variant's answer follow its own work line",
        description="Split arith answers into value right, lookup right and letter follows the work "
                    "(caopd.diagnostics.arith_work_agreement).",
    )
    parser.add_argument("--variants", nargs="*", help="default: every variant in the index")


def _run_seed_study(args: argparse.Namespace) -> int:
    from caopd.diagnostics.seed_study import run_study

    report = run_study(args.seeds, args.out, configfiles=args.configfile, cores=args.cores,
                       names=_role_names(args), targets=args.targets, aggregate_only=args.aggregate_only)
    print(report, end="")
    return 0


def add_seed_study(subparsers: argparse._SubParsersAction) -> None:
    parser = _subparser(
        subparsers, "seed-study", _run_seed_study, reads_index=False,
        help="the whole pipeline at several seeds and the paper's checks across them",
        description="Run the pipeline at each seed in OUT/seed-<s>/ and write per_seed.tsv, summary.tsv, "
                    "checks.txt and seed_study.png (caopd.diagnostics.seed_study).",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/seed_study"))
    parser.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--aggregate-only", action="store_true", help="only read finished seeds")
    _role_arguments(parser)
    parser.add_argument("targets", nargs="*", help="snakemake targets (default: every variant)")
