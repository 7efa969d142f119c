"""``headscope compare RUN_A RUN_B --out DIR``: its arguments and what it does."""

from __future__ import annotations

import argparse
import typing

from headscope.analyses.stats import Correction
from headscope.comparison.page import summary_lines
from headscope.comparison.result import compare
from headscope.comparison.stats import MIN_N


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="directory of the first run (headscope run --out)")
    parser.add_argument("run_b", metavar="RUN_B", help="directory of the second run; changes are B - A")
    parser.add_argument("--out", default="headscope-compare", help="output directory (default: %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default: %(default)s)")
    parser.add_argument("--correction", choices=typing.get_args(Correction), default="bh",
                        help="multiple-testing correction of the role-change tests (default: %(default)s)")
    parser.add_argument("--min-n", type=int, default=MIN_N,
                        help="fewest scores of a role in each run for its change to be tested (default: "
                             "%(default)s)")
    parser.add_argument("--allow-mixed-conventions", action="store_true",
                        help="compare runs made under different --conventions (refused otherwise: the same "
                             "statistic would be defined differently in A and B)")


def main_compare(args: argparse.Namespace) -> int:
    comparison = compare(args.run_a, args.run_b, alpha=args.alpha, correction=args.correction,
                         allow_mixed_conventions=args.allow_mixed_conventions, min_n=args.min_n)
    out = comparison.save(args.out)
    for line in summary_lines(comparison):
        print(line)
    print(f"Wrote the page {out / 'report' / 'index.html'} and the tables compare_heads.csv, compare_layers.csv"
          + (", compare_roles.csv" if comparison.roles is not None else "") + f" in {out}.")
    return 0
