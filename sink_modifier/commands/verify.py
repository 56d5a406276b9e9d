"""``sink-modifier verify``: check a pruned checkpoint against its ``sink_modifier.json``.

The checks are :func:`sink_modifier.export.verify.verify_checkpoint`; this module prints them.
Exit code 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys

from sink_modifier.commands.arguments import add_family_argument, add_trust_remote_code_argument, non_negative_float

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "verify", help="check a pruned checkpoint against its sink_modifier.json (exit 1 on any mismatch)"
    )
    parser.add_argument("dir", help="checkpoint folder written by `sink-modifier prune`")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-6,
                        help="allowed difference of each layer's zero fraction from the recorded one (default 1e-6)")
    add_trust_remote_code_argument(parser)
    add_family_argument(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from sink_modifier.export.verify import verify_checkpoint

    report = verify_checkpoint(
        args.dir, tolerance=args.tolerance, trust_remote_code=args.trust_remote_code, family=args.family
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for check in report.checks:
            print(f"ok       {check}")
        for problem in report.problems:
            print(f"PROBLEM  {problem}")
        for note in report.notes:
            print(f"note     {note}")
        if report.coverage:
            for row in report.coverage["rows"]:
                why = f" ({row['reason']})" if row["reason"] else ""
                print(f"coverage {row['status']}{why}: {row['parameters']:,} parameters ({row['share']:.1%}), "
                      f"{row['modules']} modules, e.g. {', '.join(row['examples'][:2])}")
    if report.ok:
        if not args.json:
            print(f"{args.dir}: verified ({len(report.checks)} checks passed)")
        return 0
    where = "in the JSON above" if args.json else "listed above"
    print(f"sink-modifier verify: {args.dir} failed verification: {len(report.problems)} problem(s) {where}",
          file=sys.stderr)
    return 1
