"""Shared argparse helpers: ``--config FILE`` plus ``key.sub=value`` overrides."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--config", required=required, metavar="FILE",
                        help="YAML config file (see configs/); keys are checked against the stage's schema")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. model.hidden_size=256 run=demo")
