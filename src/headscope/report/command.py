"""``headscope report DIR``: rebuild the figures and the HTML report of a finished run, without the model."""

from __future__ import annotations

import argparse


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="output directory of a finished `headscope run`")


def main_report(args: argparse.Namespace) -> int:
    from headscope.report.build import build_report

    index = build_report(args.directory)
    print(f"wrote {index}")
    return 0
