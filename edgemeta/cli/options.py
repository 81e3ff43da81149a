"""Arguments several `edgemeta` commands share."""

from __future__ import annotations

import argparse


def add_task_arguments(parser: argparse.ArgumentParser, way: int | None = 5, shot: int | None = 1,
                       query: int | None = 5) -> None:
    """`--way`, `--shot`, `--query`: the episode's N, K and queries per class."""
    parser.add_argument("--way", type=int, default=way, help="classes per episode (N)")
    parser.add_argument("--shot", type=int, default=shot, help="support images per class (K)")
    parser.add_argument("--query", type=int, default=query, help="query images per class")
