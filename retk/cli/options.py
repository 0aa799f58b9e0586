"""Command-line options that several ``retk train`` commands share, declared once as ``Annotated`` types."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

# Data sources of ``retk train contrastive`` and ``retk train moe``.
Qrels = Annotated[
    list[str],
    typer.Option("--qrels", help="BEIR folder whose train-split qrels give (query, relevant document) pairs, as [DOMAIN=]PATH. Repeatable."),
]
Titles = Annotated[
    list[str],
    typer.Option("--titles", help="BEIR folder or corpus file whose (title, text) pairs are training examples, as [DOMAIN=]PATH. Repeatable."),
]
Pairs = Annotated[
    list[str],
    typer.Option("--pairs", help="JSONL or Parquet file with anchor, positive, optional negatives and domain, as [DOMAIN=]PATH. Repeatable."),
]
EvalSplit = Annotated[Optional[str], typer.Option(help="Qrels split held out for evaluation during training, e.g. test.")]
HoldOut = Annotated[float, typer.Option("--hold-out", help="Fraction of title and pairs anchors held out for evaluation and never trained on.")]
MineNegatives = Annotated[int, typer.Option(help="Hard negatives to mine per example from --negatives-index (0: in-batch negatives only).")]

# Optimisation of the bi-encoder trainers.
LearningRate = Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate, reached after warm-up and decayed linearly to 0.")]
WarmupRatio = Annotated[float, typer.Option(help="Fraction of the steps spent warming up the learning rate.")]
MaxSeqLength = Annotated[Optional[int], typer.Option(help="Tokens per text (default: the model's own limit).")]
Scale = Annotated[float, typer.Option(help="Inverse temperature of the loss (20 = temperature 0.05).")]
Cached = Annotated[bool, typer.Option(help="Use CachedMultipleNegativesRankingLoss: large batches in bounded memory.")]
MiniBatchSize = Annotated[int, typer.Option(help="Texts embedded at once by the cached loss.")]
EvalSteps = Annotated[int, typer.Option(help="Evaluate on the held-out pairs every N steps (0: after each epoch).")]
CheckpointSteps = Annotated[int, typer.Option(help="Save a checkpoint every N steps under OUT/checkpoints (0: none).")]
MaxSteps = Annotated[Optional[int], typer.Option(help="Stop after this many steps.")]
Device = Annotated[Optional[str], typer.Option(help="Torch device (default: cuda when available, else cpu).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output folder once the new one is complete.")]

# Shared by every trainer.
TrainSplit = Annotated[str, typer.Option(help="Qrels split to train on.")]
Epochs = Annotated[int, typer.Option(help="Passes over the training examples.")]
MiningDepth = Annotated[int, typer.Option(help="Hits searched per anchor when mining negatives.")]
Seed = Annotated[int, typer.Option(help="Seed of sampling, batch order and initialisation.")]

# The cross-encoder and DSE trainers.
Dataset = Annotated[Path, typer.Option(help="BEIR dataset folder with qrels/<split>.tsv.")]
Negatives = Annotated[int, typer.Option(help="BM25-mined hard negatives per query.")]
NegativesIndex = Annotated[Optional[Path], typer.Option(help="Index to mine negatives from (default: a temporary BM25 index of the corpus).")]
MaxExamples = Annotated[Optional[int], typer.Option(help="Train on a seeded random sample of this many qrels pairs.")]
