"""`dyme prepare`: build datasets in dyme's JSONL schema. Each source registers its subcommand here."""

from __future__ import annotations

import typer

prepare_app = typer.Typer(help="Build datasets in dyme's JSONL schema.", no_args_is_help=True)

from . import synthetic_commands  # noqa: E402,F401  (registers the subcommands)
from . import dataset_commands  # noqa: E402,F401  (registers the dataset converters)
