"""The Typer application and the error handling shared by every command."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from retk.errors import RetkError

app = typer.Typer(
    name="retk",
    help="Index corpora, search them and evaluate retrieval quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# soft_wrap keeps long messages on one line when stderr is not a terminal.
console = Console(stderr=True, soft_wrap=True)
state = {"debug": False}


@app.callback()
def configure(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show info logs."),
) -> None:
    state["debug"] = debug
    level = logging.WARNING
    if verbose:
        level = logging.INFO
    if debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # bm25s sets its own logger to DEBUG at import, which would print through the root handler.
    logging.getLogger("bm25s").setLevel(level)
    if level == logging.WARNING:
        _hide_model_loading_bars()


def _hide_model_loading_bars() -> None:
    """Hide the Hugging Face "Loading weights" bars that every dense search would print.

    The hub reads its setting from the environment at import, and transformers
    copies the hub's state when it is imported, so both orders are handled.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hub = sys.modules.get("huggingface_hub")
    if hub is not None:
        hub.utils.disable_progress_bars()
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.utils.logging.disable_progress_bar()


def main() -> None:
    """Run the CLI; an input, file or retk error prints one line on stderr and exits with status 2.

    Typer's standalone mode already turns usage errors (exit status 2) and
    Ctrl-C into a message and an exit status, so only retk's own errors and
    file or value errors are caught here.
    """
    try:
        app()
    except RetkError as error:
        _fail(error, 2)
    except (OSError, ValueError) as error:
        _fail(error, 2)


def _fail(error: Exception, code: int) -> None:
    if state["debug"]:
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(code)
