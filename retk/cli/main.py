"""Entry point of the ``retk`` command."""

# Importing a command module registers its commands on the Typer app.
from retk.cli import commands  # noqa: F401
from retk.cli import fusion  # noqa: F401
from retk.cli import leaderboard  # noqa: F401
from retk.cli import llm_training  # noqa: F401
from retk.cli import rerank_training  # noqa: F401
from retk.cli import train  # noqa: F401
from retk.cli import training  # noqa: F401
from retk.cli.app import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
