"""``sink-modifier families``: list the supported model families and how each is detected."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    return subparsers.add_parser("families", help="list the supported model families and how each is detected")


def run(args: argparse.Namespace) -> int:
    from sink_modifier.families import FAMILIES

    for family in FAMILIES.values():
        kind = "diffusion" if family.diffusion else "causal"
        remote = ", remote code" if family.remote_code else ""
        print(f"{family.name:16s} {kind}{remote}: {family.description}")
        if family.examples:
            print(f"{'':16s} e.g. {', '.join(family.examples)}")
    return 0
