"""``retk train contrastive`` and ``retk train moe``: fine-tune a bi-encoder, or an MoE bi-encoder with one expert per domain.

Training data comes from repeatable sources, each optionally labelled with a
domain as ``DOMAIN=PATH``:

- ``--qrels [DOMAIN=]DATASET``: a BEIR folder's ``--train-split`` qrels (query → relevant document),
  evaluated on its ``--eval-split`` qrels when given;
- ``--titles [DOMAIN=]CORPUS``: title → text pairs of a BEIR folder or corpus file;
- ``--pairs [DOMAIN=]FILE``: a JSONL or Parquet file of anchor, positive, negatives, domain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from retk.cli import options
from retk.cli.app import console
from retk.cli.train import train_app
from retk.datasets import BeirDataset, CorpusReader, is_beir_folder
from retk.errors import RetkError
from retk.training.data import (
    TrainingExample,
    hold_out,
    mine_hard_negatives,
    pairs_from_qrels,
    pairs_from_titles,
    read_pairs_file,
)
from retk.training.loop import TrainingHistory, TrainingSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A training-data path with its optional domain label, parsed from ``[DOMAIN=]PATH``."""

    path: Path
    domain: str | None

    @classmethod
    def parse(cls, value: str) -> "Source":
        domain, separator, path = value.partition("=")
        if not separator or Path(value).exists():
            return cls(Path(value), None)
        if not domain.strip():
            raise typer.BadParameter(f"empty domain in '{value}'; write DOMAIN=PATH or PATH")
        return cls(Path(path), domain.strip())


@dataclass
class LoadedData:
    train: list[TrainingExample]
    held_out: list[TrainingExample]




def load_sources(
    qrels: list[str],
    titles: list[str],
    pairs: list[str],
    *,
    train_split: str,
    eval_split: str | None,
    hold_out_fraction: float,
    seed: int,
) -> LoadedData:
    """Read every source into training and held-out examples.

    Qrels sources hold out their ``eval_split`` qrels; title and pairs
    sources hold out ``hold_out_fraction`` of their anchors. A held-out
    title document is never trained on.
    """
    data = LoadedData([], [])
    for source in map(Source.parse, qrels):
        dataset = BeirDataset.open(source.path)
        data.train += pairs_from_qrels(dataset, train_split, domain=source.domain)
        if eval_split:
            data.held_out += pairs_from_qrels(dataset, eval_split, domain=source.domain)
    for source in map(Source.parse, titles):
        corpus = BeirDataset.open(source.path).corpus() if is_beir_folder(source.path) else CorpusReader(source.path)
        train, held = hold_out(pairs_from_titles(corpus, domain=source.domain), hold_out_fraction, seed=seed)
        data.train += train
        data.held_out += held
    for source in map(Source.parse, pairs):
        examples = [_with_domain(example, source.domain) for example in read_pairs_file(source.path)]
        train, held = hold_out(examples, hold_out_fraction, seed=seed)
        data.train += train
        data.held_out += held
    if not data.train:
        raise RetkError("no training examples: pass at least one --qrels, --titles or --pairs source")
    return data


def add_negatives(examples: list[TrainingExample], indexes: list[str], count: int, depth: int) -> list[TrainingExample]:
    """Mine ``count`` hard negatives per example from the index of its domain (an unlabelled index serves all)."""
    from retk.retrieval import Index

    if count == 0:
        return examples
    if not indexes:
        raise RetkError("--mine-negatives needs --negatives-index: a retk index (BM25 or dense) of the training corpus")
    by_domain = {source.domain: Index.open(source.path) for source in map(Source.parse, indexes)}
    mined: list[TrainingExample] = []
    for domain in dict.fromkeys(example.domain for example in examples):
        index = by_domain.get(domain, by_domain.get(None))
        group = [example for example in examples if example.domain == domain]
        if index is None:
            console.print(f"no --negatives-index for domain {domain}; its {len(group)} examples get no mined negatives")
            mined += group
            continue
        mined += mine_hard_negatives(group, index, count=count, depth=depth)
    return mined


def training_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps, loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def report(history: TrainingHistory, output: Path) -> None:
    console.print(f"trained {history.steps} steps on {history.examples_seen} examples in {history.seconds:.1f} s; saved to {output}")
    if history.losses:
        console.print(f"loss: first logged {history.losses[0][1]:.4f}, last {history.losses[-1][1]:.4f}")
    for step, metrics in history.evaluations[-2:]:
        shown = ", ".join(f"{name} {value:.4f}" for name, value in sorted(metrics.items()))
        console.print(f"held-out at step {step}: {shown}")
    for name, value in history.extra.items():
        console.print(f"{name}: {value:.4f}")
    console.print(f"index a corpus with it: retk index CORPUS --out INDEX --encoder {output}")


@train_app.command("contrastive")
def contrastive_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the fine-tuned model (a sentence-transformers folder)."),
    model: str = typer.Option("minilm", help="Base model: 'minilm' or a local sentence-transformers folder."),
    qrels: options.Qrels = [],
    titles: options.Titles = [],
    pairs: options.Pairs = [],
    train_split: options.TrainSplit = "train",
    eval_split: options.EvalSplit = None,
    hold_out_fraction: options.HoldOut = 0.0,
    mine_negatives: options.MineNegatives = 0,
    negatives_index: list[str] = typer.Option([], help="Index of the training corpus to mine negatives from, as [DOMAIN=]PATH. Repeatable."),
    mining_depth: options.MiningDepth = 30,
    epochs: options.Epochs = 1,
    batch_size: int = typer.Option(32, help="Examples per batch; the other examples' positives are each anchor's in-batch negatives."),
    learning_rate: options.LearningRate = 2e-5,
    warmup_ratio: options.WarmupRatio = 0.1,
    max_seq_length: options.MaxSeqLength = None,
    scale: options.Scale = 20.0,
    cached: options.Cached = False,
    mini_batch_size: options.MiniBatchSize = 16,
    group_by_domain: bool = typer.Option(False, help="Fill each batch from a single domain."),
    eval_steps: options.EvalSteps = 0,
    checkpoint_steps: options.CheckpointSteps = 0,
    max_steps: options.MaxSteps = None,
    seed: options.Seed = 0,
    device: options.Device = None,
    overwrite: options.Overwrite = False,
) -> None:
    """Fine-tune a sentence-transformers model with MultipleNegativesRankingLoss on duplicate-free batches."""
    from retk.training.contrastive import train_contrastive

    settings = TrainingSettings(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
        max_seq_length=max_seq_length, scale=scale, cached=cached, mini_batch_size=mini_batch_size,
        group_by_domain=group_by_domain, eval_steps=eval_steps, checkpoint_steps=checkpoint_steps,
        max_steps=max_steps, seed=seed,
    )
    data = load_sources(qrels, titles, pairs, train_split=train_split, eval_split=eval_split, hold_out_fraction=hold_out_fraction, seed=seed)
    train = add_negatives(data.train, negatives_index, mine_negatives, mining_depth)
    console.print(f"{len(train)} training examples, {len(data.held_out)} held out")
    with training_progress() as progress:
        task = progress.add_task("training", total=None, loss=float("nan"))
        history = train_contrastive(
            model, train, out, settings, held_out=data.held_out, device=device, overwrite=overwrite,
            progress=lambda step, total, loss: progress.update(task, completed=step, total=total, loss=loss),
        )
    report(history, out)


@train_app.command("moe")
def moe_command(
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the MoE model (loadable with --encoder OUT)."),
    model: str = typer.Option("minilm", help="Base BERT-family model: 'minilm' or a local sentence-transformers folder."),
    qrels: options.Qrels = [],
    titles: options.Titles = [],
    pairs: options.Pairs = [],
    domains: Optional[str] = typer.Option(None, help="Comma-separated domains in expert order (default: the sources' domains, sorted)."),
    expert_layers: str = typer.Option("all", help="Layers given experts: 'all', a count k (the last k layers) or indices like 0,5."),
    router_texts: int = typer.Option(2000, help="Texts per domain used to train the router."),
    train_split: options.TrainSplit = "train",
    eval_split: options.EvalSplit = None,
    hold_out_fraction: options.HoldOut = 0.0,
    mine_negatives: options.MineNegatives = 0,
    negatives_index: list[str] = typer.Option([], help="Index of a domain's corpus to mine negatives from, as [DOMAIN=]PATH. Repeatable."),
    mining_depth: options.MiningDepth = 30,
    epochs: options.Epochs = 1,
    batch_size: int = typer.Option(32, help="Examples per single-domain batch."),
    learning_rate: options.LearningRate = 2e-5,
    warmup_ratio: options.WarmupRatio = 0.1,
    max_seq_length: options.MaxSeqLength = None,
    scale: options.Scale = 20.0,
    cached: options.Cached = False,
    mini_batch_size: options.MiniBatchSize = 16,
    eval_steps: options.EvalSteps = 0,
    checkpoint_steps: options.CheckpointSteps = 0,
    max_steps: options.MaxSteps = None,
    seed: options.Seed = 0,
    device: options.Device = None,
    overwrite: options.Overwrite = False,
) -> None:
    """Convert a BERT-family model into one feed-forward expert per domain and train it with enforced routing."""
    from retk.training.moe import RouterSettings, train_moe

    settings = TrainingSettings(
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, warmup_ratio=warmup_ratio,
        max_seq_length=max_seq_length, scale=scale, cached=cached, mini_batch_size=mini_batch_size,
        group_by_domain=True, eval_steps=eval_steps, checkpoint_steps=checkpoint_steps, max_steps=max_steps, seed=seed,
    )
    data = load_sources(qrels, titles, pairs, train_split=train_split, eval_split=eval_split, hold_out_fraction=hold_out_fraction, seed=seed)
    train = add_negatives(data.train, negatives_index, mine_negatives, mining_depth)
    expert_order = [name.strip() for name in domains.split(",")] if domains else None
    console.print(f"{len(train)} training examples, {len(data.held_out)} held out")
    with training_progress() as progress:
        task = progress.add_task("training", total=None, loss=float("nan"))
        history = train_moe(
            model, train, out, settings, domains=expert_order, expert_layers=expert_layers,
            router=RouterSettings(texts_per_domain=router_texts, seed=seed), held_out=data.held_out,
            device=device, overwrite=overwrite,
            progress=lambda step, total, loss: progress.update(task, completed=step, total=total, loss=loss),
        )
    report(history, out)


def _with_domain(example: TrainingExample, domain: str | None) -> TrainingExample:
    if domain is None or example.domain is not None:
        return example
    from dataclasses import replace

    return replace(example, domain=domain)
