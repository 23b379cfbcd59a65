"""`python -m cpt data check [CONFIG.yaml] [key=value ...] [--strict] [--out FILE]`: every configured task and
general benchmark loaded and read row by row before any compute is spent (cpt.data.check)."""

from __future__ import annotations

import sys

from cpt import flags
from cpt.atomic import write_json
from cpt.config import config_from_args
from cpt.data.check import check_config, format_report, reports_to_dict


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt data check", description=(
        "Load every configured task and general benchmark, read every selected row (images decoded) and report "
        "counts, answer types and problems by row id. Exits 1 when a task cannot be used."))
    parser.add_argument("args", type=flags.TEXT, nargs="*", help="[CONFIG.yaml] [key=value ...], as for fit")
    parser.add_argument("--strict", action="store_true", help="also exit 1 when any row has a problem")
    parser.add_argument("--out", type=flags.OUTPUT_FILE,
                        help="write the full report (every problem) to this JSON file")
    return parser


def main(args: list[str]) -> int:
    parser = build_parser()
    if args and args[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if not args:
        parser.print_usage(sys.stderr)
        return 2
    if args[0] != "check":
        print(f"error: unknown data command {' '.join(args[:1])!r}\n", file=sys.stderr)
        parser.print_usage(sys.stderr)
        return 2
    options = parser.parse_intermixed_args(args[1:])  # no input flags: nothing an output could overwrite
    reports = check_config(config_from_args(options.args))
    print(format_report(reports))
    if options.out:
        write_json(options.out, reports_to_dict(reports))
    bad_rows = any(s.problems for r in reports for s in r.splits.values())
    return 1 if any(not r.usable for r in reports) or (options.strict and bad_rows) else 0
