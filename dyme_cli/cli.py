"""The `dyme` command line: the root app. It registers the commands (dyme_cli/commands/) and turns every
user error the engine raises into one line and exit code 2."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from .commands import compare, eval as eval_cmd, export, inspect, prepare, train, verifiers
from .errors import UserError
from .ui import fail


class _Commands(TyperGroup):
    """The root group: a UserError from any command is one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            fail(str(exc))


app = typer.Typer(
    cls=_Commands,
    help="Post-train small vision-language models to think reliably with DyME "
    "(Dynamic Memorization and Exploration).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare.app, name="prepare")
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_command)
app.command("compare")(compare.compare_command)
app.command("export")(export.export_command)
app.command("inspect-traces")(inspect.inspect_traces)
app.add_typer(verifiers.app, name="verifiers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
