"""The `mma` command line: the only place that parses arguments or reads the environment.

One module per command group (`data`, `bench`, `train`, `evaluation`, `serving`); each adds its
commands to the parser in `register`, and each command is a ``cmd_*`` function of the parsed args.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mma_agent.cli import bench, data, evaluation, serving, train
from mma_agent.cli.common import _config, _pipeline, _print_tables  # noqa: F401  (scripts/train.sh reads the workdir through _pipeline)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="YAML pipeline config (see configs/default.yaml)")
    common.add_argument("--data", type=Path, help="data set folder (default ../shared/datasets/movielens-posters)")
    common.add_argument("--workdir", type=Path, help="where caches, retrievers and pools go (default .mma)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    parser = argparse.ArgumentParser(prog="mma", description="Meta-Modal Agent: multimodal reranking under missing modalities")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (data, bench, train, evaluation, serving):
        group.register(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not sys.stderr.isatty() and "tqdm" not in sys.modules:  # bars into a log file: an update every 10 s, not one per step
        os.environ.setdefault("TQDM_MININTERVAL", "10")  # tqdm reads it when first imported
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not args.verbose:  # the HTTP clients log every request at INFO: one line per policy call of an openai: backend
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from pydantic import ValidationError

    from mma_agent.data.schema import DatasetError

    try:
        args.func(args)
    except (DatasetError, ValidationError, FileNotFoundError, ValueError) as err:
        print(f"mma: error: {err}", file=sys.stderr)
        return 2
    return 0
