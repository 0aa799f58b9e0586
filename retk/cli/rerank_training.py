"""The ``retk train cross-encoder`` and ``retk train dse`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from retk.cli import options
from retk.cli.app import console
from retk.cli.train import train_app
from retk.embeddings.sentence_transformer import DEFAULT_MODEL


@train_app.command("cross-encoder")
def train_cross_encoder_command(
    dataset: options.Dataset = ...,
    out: Path = typer.Option(..., "--out", "-o", help="Cross-encoder folder to create."),
    model: str = typer.Option(DEFAULT_MODEL, help="Starting weights: 'minilm' (bundled), a BERT-family folder, or a cross-encoder folder."),
    split: options.TrainSplit = "train",
    loss: str = typer.Option("bce", help="'bce' (pointwise, calibrated logits) or 'listwise' (softmax over each query's group)."),
    negatives: options.Negatives = 4,
    mining_depth: options.MiningDepth = 30,
    negatives_index: options.NegativesIndex = None,
    epochs: options.Epochs = 1,
    batch_size: int = typer.Option(8, help="Queries per step; each brings 1 + negatives pairs."),
    learning_rate: float = typer.Option(5e-5, help="AdamW peak learning rate."),
    max_length: int = typer.Option(256, help="Tokens per (query, document) pair."),
    max_examples: options.MaxExamples = None,
    seed: int = typer.Option(0, help="Seed for sampling, shuffling and the new head's initialisation."),
    overwrite: options.Overwrite = False,
) -> None:
    """Train a cross-encoder reranker on qrels with BM25-mined hard negatives."""
    from retk.training.cross_encoder import CrossEncoderSettings, train_cross_encoder

    settings = CrossEncoderSettings(
        model=model,
        split=split,
        loss=loss,
        negatives=negatives,
        mining_depth=mining_depth,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        max_examples=max_examples,
        seed=seed,
    )
    with _progress() as progress:
        task = progress.add_task("training cross-encoder", total=None)
        train_cross_encoder(dataset, out, settings, negatives_index=negatives_index, overwrite=overwrite, progress=_step_updater(progress, task))
    console.print(f"wrote cross-encoder to {out}")


@train_app.command("dse")
def train_dse_command(
    dataset: options.Dataset = ...,
    out: Path = typer.Option(..., "--out", "-o", help="Student bi-encoder folder to create (usable by 'retk index --encoder')."),
    teacher: Optional[Path] = typer.Option(None, help="Cross-encoder folder whose logits the student learns; required unless --c 0."),
    student: str = typer.Option(DEFAULT_MODEL, help="Starting bi-encoder: 'minilm' (bundled) or a sentence-transformers folder."),
    c: float = typer.Option(0.5, "--c", help="Weight of the distillation term: 0 is contrastive only, 1 distillation only."),
    distillation: str = typer.Option("mse", help="'mse' (score vs calibrated logit) or 'margin-mse' (score margins)."),
    calibration: str = typer.Option("student", help="'student' (map logits to the untrained student's score mean and std) or 'none'."),
    scale: float = typer.Option(20.0, help="Student score = scale * cosine (inverse softmax temperature)."),
    split: options.TrainSplit = "train",
    negatives: options.Negatives = 4,
    mining_depth: options.MiningDepth = 30,
    negatives_index: options.NegativesIndex = None,
    epochs: options.Epochs = 1,
    batch_size: int = typer.Option(16, help="Queries per step; every document of the step is an in-batch negative."),
    learning_rate: float = typer.Option(2e-5, help="AdamW peak learning rate."),
    max_seq_length: int = typer.Option(256, help="Student tokens per text."),
    teacher_max_length: int = typer.Option(256, help="Teacher tokens per (query, document) pair."),
    max_examples: options.MaxExamples = None,
    cache_dir: Optional[Path] = typer.Option(None, help="Teacher score cache (default: $RETK_CACHE_DIR/dse-teacher-scores)."),
    seed: int = typer.Option(0, help="Seed for sampling and shuffling."),
    overwrite: options.Overwrite = False,
) -> None:
    """Train a bi-encoder student with Distilled Sentence Embedding from a cross-encoder teacher."""
    from retk.training.dse import DSESettings, train_dse

    settings = DSESettings(
        student=student,
        c=c,
        distillation=distillation,
        calibration=calibration,
        scale=scale,
        split=split,
        negatives=negatives,
        mining_depth=mining_depth,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_seq_length=max_seq_length,
        teacher_max_length=teacher_max_length,
        max_examples=max_examples,
        seed=seed,
    )
    with _progress() as progress:
        scoring = progress.add_task("teacher scores (pairs)", total=None, visible=False)
        training = progress.add_task("training student", total=None)

        def update_scoring(done: int, total: int) -> None:
            progress.update(scoring, completed=done, total=total, visible=True)

        train_dse(
            dataset,
            out,
            settings,
            teacher=teacher,
            negatives_index=negatives_index,
            cache_dir=cache_dir,
            overwrite=overwrite,
            progress=_step_updater(progress, training),
            teacher_progress=update_scoring,
        )
    console.print(f"wrote DSE student to {out}; index with: retk index CORPUS --encoder {out} --out INDEX")


def _step_updater(progress: Progress, task: int):
    def update(step: int, total: int, loss: float) -> None:
        progress.update(task, completed=step, total=total, description=f"loss {loss:.4f}")

    return update


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
