"""What every command shares: the config from YAML and flags, the pipeline, printed tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from mma_agent.config import PipelineConfig, load_config
from mma_agent.util import format_table


def _config(args: argparse.Namespace) -> PipelineConfig:
    cfg = load_config(args.config)
    updates = {}
    if args.data is not None:
        updates["data"] = cfg.data.model_copy(update={"path": Path(args.data)})
    if args.workdir is not None:
        updates["workdir"] = Path(args.workdir)
    return PipelineConfig.model_validate(
        {**cfg.model_dump(), **{k: v.model_dump() if hasattr(v, "model_dump") else v for k, v in updates.items()}}
    )


def _pipeline(args):
    from mma_agent.pipeline import Pipeline

    return Pipeline(_config(args))


def _print_tables(tables: dict[str, list[dict]]) -> None:
    """A benchmark's tables, each under its title."""
    for title, rows in tables.items():
        print(format_table(rows, title))
