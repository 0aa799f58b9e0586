"""The ``retk train`` command group; each training method registers a subcommand here."""

import typer

from retk.cli.app import app

train_app = typer.Typer(help="Train or fine-tune encoders and rerankers.", no_args_is_help=True)
app.add_typer(train_app, name="train")
