"""`dyme launch`: a dyme command on several processes through accelerate's own launcher, ending like one process.

`accelerate launch -m dyme_cli train RECIPE.toml` works too; what this adds is the ending: when a process fails, the
launcher prints torch's ChildFailedError traceback and exits 1, whatever the process said. Here the process's own
one-line error is all that is printed, and the launch exits with its code (2 for a mistake in what the user gave,
143 after SIGTERM), so that a script or a scheduler sees what a single process would have told it.
"""

from __future__ import annotations

import logging
import sys

import typer

from ..errors import BadArgument

#: The commands that run on every process of a launched job.
LAUNCHED = ("train", "eval", "compare")


def launch_command(ctx: typer.Context) -> None:
    """Run train, eval or compare on several processes, ending like one process.

    The options of `accelerate launch` (--config_file, --num_processes, --num_machines, --main_process_port, ...),
    then the command, e.g. `dyme launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 8 train
    recipes/chart.toml`. A failing process's one-line error and exit code are the launch's."""
    from accelerate.commands.launch import launch_command as accelerate_launch, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    launcher, command = split_launch(ctx.args)
    args = launch_command_parser().parse_args([*launcher, "-m", "dyme_cli", *command])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # its own lines about the failure
    try:
        accelerate_launch(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -15: ended by SIGTERM
        if code != 2:  # a user error is the process's own one line, already printed
            print(f"error: process {rank} of the launch ended with exit code {code}", file=sys.stderr)
        raise typer.Exit(code) from None


def split_launch(args: list[str]) -> tuple[list[str], list[str]]:
    """(accelerate launch's options, the dyme command with its arguments): the command starts at the first
    argument that names one of LAUNCHED."""
    for index, arg in enumerate(args):
        if arg in LAUNCHED:
            return args[:index], args[index:]
    raise BadArgument(f"dyme launch: name the command to launch ({', '.join(LAUNCHED)}) after the launcher's options")
