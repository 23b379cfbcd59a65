"""`python -m cpt data check [CONFIG.yaml] [key=value ...] [--strict] [--out FILE]`: every configured task and
general benchmark loaded and read row by row before any compute is spent (cpt.data.check)."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig

from cpt import flags
from cpt.atomic import write_json
from cpt.config import config_from_args
from cpt.data.check import check_config, format_report, reports_to_dict
from cpt.errors import ConfigError


def build_parser() -> flags.Parser:
    parser = flags.Parser(prog="python -m cpt data check", description=(
        "Load every configured task and general benchmark, read every selected row (images decoded) and report "
        "counts, answer types and problems by row id. Exits 1 when a task cannot be used."))
    parser.add_argument("args", type=flags.TEXT, nargs="*", help="[CONFIG.yaml] [key=value ...], as for fit")
    parser.add_argument("--strict", action="store_true", help="also exit 1 when any row has a problem")
    parser.add_argument("--out", type=flags.OUTPUT_FILE,
                        help="write the full report (every problem) to this JSON file")
    return parser


def data_files(cfg: DictConfig, args: list[str]) -> list[Path]:
    """What the check reads: the config file and every local task's and benchmark's files."""
    files = [Path(args[0])] if args and "=" not in args[0] else []
    for spec in (cfg.local_tasks or {}).values():
        files += [Path(spec[key]) for key in ("path", "train", "eval") if spec.get(key)]
    files += [Path(spec.path) for spec in (cfg.eval.benchmarks or {}).values() if spec.get("path")]
    return files


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
    options = parser.parse_intermixed_args(args[1:])
    cfg = config_from_args(options.args)
    if options.out and (problem := flags.overlap(options.out, data_files(cfg, options.args))):
        raise ConfigError(f"--out {str(options.out)!r} {problem} (a dataset of the config): name another file")
    reports = check_config(cfg)
    print(format_report(reports))
    if options.out:
        write_json(options.out, reports_to_dict(reports))
    bad_rows = any(s.problems for r in reports for s in r.splits.values())
    return 1 if any(not r.usable for r in reports) or (options.strict and bad_rows) else 0
