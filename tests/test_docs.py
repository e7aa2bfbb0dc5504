"""The documentation: the MkDocs site builds with --strict (no broken link, anchor or missing page), its references
are generated from the code (every recipe key, every command), and the README stays a short entry point into it."""

from __future__ import annotations

import re
import subprocess
import sys
import typing

import pytest

from conftest import REPO

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                           capture_output=True, text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1",
                                                                             **__import__("os").environ})
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def _recipe_keys(model, path=()) -> list[str]:
    from pydantic import BaseModel

    keys = []
    for name, field in model.model_fields.items():
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        keys += _recipe_keys(nested[0], (*path, name)) if nested else [".".join((*path, name))]
    return keys


def test_the_site_builds_strictly_and_its_recipe_reference_has_every_key(site):
    from dyme_cli.recipe import Recipe

    page = (site / "recipes" / "index.html").read_text(encoding="utf-8")
    for key in _recipe_keys(Recipe):
        section, _, name = key.rpartition(".")
        assert f"<code>[{section}]</code>" in page and f"<code>{name}</code>" in page, key


def test_the_command_reference_has_every_command_and_option(site):
    import typer

    from dyme_cli.cli import app

    page = (site / "commands" / "index.html").read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        for words, leaf in ([([name, sub], c) for sub, c in command.commands.items()] if hasattr(command, "commands")
                            else [([name], command)]):
            assert f"<code>dyme {' '.join(words)}</code>" in page, words
            for param in leaf.params:
                if param.param_type_name == "option":
                    assert f"<code>{param.opts[0]}</code>" in page, (words, param.opts)


def test_the_readme_is_short_and_every_link_into_the_docs_exists():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 12_000
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links and all((REPO / link).is_file() for link in links), links


def test_every_recipe_key_says_what_it_does():
    from pydantic import BaseModel

    from dyme_cli.recipe import Recipe

    def undocumented(model, path=()):
        for name, field in model.model_fields.items():
            nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
            if nested:
                yield from undocumented(nested[0], (*path, name))
            elif not (field.description or "").strip():
                yield ".".join((*path, name))

    assert list(undocumented(Recipe)) == []
