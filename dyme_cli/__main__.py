"""`python -m dyme_cli` runs the command line, as `accelerate launch -m dyme_cli train RECIPE.toml` does."""

from .cli import main

main()
