"""The ``retk fuse`` command: a hybrid index by reciprocal rank fusion of built indexes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retk.cli.app import app, console
from retk.errors import RetkError
from retk.retrieval.fusion import FUSION_DEPTH, RRF_K, fuse


@app.command("fuse")
def fuse_command(
    indexes: list[Path] = typer.Argument(..., metavar="INDEX...", help="Two or more index folders built from the same corpus."),
    out: Path = typer.Option(..., "--out", "-o", help="Fusion index folder to create; it contains only manifest.json."),
    rrf_k: float = typer.Option(RRF_K, "--rrf-k", help="RRF constant k: a document at rank r scores weight / (k + r)."),
    weights: Optional[str] = typer.Option(None, help="Comma-separated weight per index, e.g. 0.3,0.7 (default: all 1)."),
    depth: int = typer.Option(FUSION_DEPTH, help="Documents each index retrieves per query before fusion."),
    overwrite: bool = typer.Option(False, help="Replace an existing folder."),
) -> None:
    """Fuse indexes with reciprocal rank fusion; search and evaluate the result like any index."""
    parsed = None
    if weights is not None:
        try:
            parsed = [float(weight) for weight in weights.split(",")]
        except ValueError:
            raise RetkError(f"invalid --weights '{weights}': expected comma-separated numbers such as 0.3,0.7") from None
    index = fuse(indexes, out, k=rrf_k, weights=parsed, depth=depth, overwrite=overwrite)
    console.print(f"fused {len(indexes)} indexes into {out}: {index.encoder.name}, k={rrf_k:g}, weights {index.encoder.weights}")
