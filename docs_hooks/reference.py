"""MkDocs hook: the recipe and command references, generated from the code at every build so they cannot drift.

A page that holds `<!-- recipe-reference -->` gets a table per recipe section (every key, its type, default, bounds
and help) from the pydantic schema in dyme_cli/recipe.py; one that holds `<!-- command-reference -->` gets every
command with its usage, help and options, from the typer app in dyme_cli/cli.py.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

RECIPE_MARK = "<!-- recipe-reference -->"
COMMAND_MARK = "<!-- command-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if RECIPE_MARK in markdown:
        markdown = markdown.replace(RECIPE_MARK, recipe_reference())
    if COMMAND_MARK in markdown:
        markdown = markdown.replace(COMMAND_MARK, command_reference())
    return markdown


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- recipes


def recipe_reference() -> str:
    from dyme_cli.recipe import Recipe

    return "\n".join(_section_tables(Recipe, []))


def _section_tables(model, path: list[str]) -> list[str]:
    """A table of `model`'s plain keys under the heading [path], then one per nested section."""
    from pydantic import BaseModel

    plain, nested = [], []
    for name, field in model.model_fields.items():
        section = _model_of(field.annotation)
        (nested if section is not None and issubclass(section, BaseModel) else plain).append((name, field, section))
    out = []
    if path:
        doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        out += [f"### `[{'.'.join(path)}]`", "", doc if doc and not doc.startswith("Usage docs") else "", ""]
        if plain:
            out += ["| key | type | default | bounds | what it does |", "|---|---|---|---|---|"]
            out += [f"| `{name}` | {_cell(_type(field.annotation))} | {_cell(_default(field))} | "
                    f"{_cell(_bounds(field))} | {_cell(field.description or '')} |" for name, field, _ in plain]
            out.append("")
    for name, field, section in nested:
        out += _section_tables(section, [*path, name])
    return out


def _model_of(annotation):
    """The pydantic model an annotation holds (through Optional), or None."""
    from pydantic import BaseModel

    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if inspect.isclass(arg) and issubclass(arg, BaseModel):
            return arg
    return None


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin is typing.Union:
        return " or ".join(_type(a) for a in args if a is not type(None)) + " (optional)"
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (list, tuple, dict):
        return f"{origin.__name__} of " + ", ".join(_type(a) for a in args if a is not Ellipsis)
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "not set"
    return f'`"{value}"`' if isinstance(value, (str, Path)) else f"`{value!r}`"


def _bounds(field) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
    return ", ".join(f"{symbol} {getattr(meta, name):,}" if isinstance(getattr(meta, name), int)
                     else f"{symbol} {getattr(meta, name):g}"
                     for meta in field.metadata for name, symbol in symbols.items() if hasattr(meta, name))


# ---------------------------------------------------------------- commands


def command_reference() -> str:
    import typer

    from dyme_cli.cli import app

    root = typer.main.get_command(app)
    out: list[str] = []
    for name, command in sorted(root.commands.items()):
        out += _command_section(command, ["dyme", name])
    return "\n".join(out)


def _command_section(command, words: list[str]) -> list[str]:
    import click

    if hasattr(command, "commands"):  # a group (typer's own click classes, too)
        out = []
        for name, sub in sorted(command.commands.items()):
            out += _command_section(sub, [*words, name])
        return out
    ctx = click.Context(command, info_name=" ".join(words))
    usage = " ".join(command.collect_usage_pieces(ctx))
    out = [f"### `{' '.join(words)}`", "", f"`{' '.join(words)} {usage}`", "",
           inspect.cleandoc(command.help or "").replace("\n", " ").replace("\\[", "["), ""]
    rows = [param for param in command.params if not getattr(param, "hidden", False)]
    if rows:
        out += ["| argument or option | default | what it does |", "|---|---|---|"]
        for param in rows:
            names = (", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
                     if param.param_type_name == "option" else f"`{param.metavar or param.name.upper()}`")
            default = param.default
            shown = "" if default in (None, (), []) or callable(default) or param.required else f"`{default}`"
            help_text = (getattr(param, "help", None) or "").replace("\\[", "[")
            out.append(f"| {names} | {_cell(shown)} | {_cell(help_text)} |")
        out.append("")
    return out
