"""The ``retk leaderboard build`` command: a static site from a folder of results JSON files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retk.cli.app import app, console
from retk.errors import RetkError

leaderboard_app = typer.Typer(help="Publish evaluation results as a static leaderboard site.", no_args_is_help=True)
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("build")
def build_command(
    results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR", help="Folder searched recursively for results JSON files."),
    out: Path = typer.Option(Path("site"), "--out", "-o", help="Folder to write the site into (replaced when complete)."),
    baseline: Optional[str] = typer.Option(None, help="Retriever that significance marks compare against (default: the one named in the results' matrix, else bm25)."),
    test: str = typer.Option("randomization", "--test", help="Paired test: randomization or t-test."),
    alpha: float = typer.Option(0.05, help="Significance level."),
    trials: int = typer.Option(10_000, help="Permutations of the randomization test."),
    title: str = typer.Option("retk leaderboard", help="Site title."),
) -> None:
    """Write index.html, one page per run and a chart; open index.html from disk, no server needed."""
    from retk.evaluation.significance import METHODS
    from retk.leaderboard import build_site

    if test not in METHODS:
        raise RetkError(f"unknown test '{test}'; expected one of {', '.join(METHODS)}")
    page = build_site(results_dir, out, baseline=baseline, method=test, alpha=alpha, trials=trials, title=title)
    console.print(f"wrote {page}")
