"""The contrastive training loop shared by the dense and the Mixture-of-Experts trainers.

One step takes a duplicate-free batch of examples, embeds the anchor,
positive and negative columns, and applies MultipleNegativesRankingLoss (or
its cached variant, which bounds memory by a mini-batch size while keeping
the whole batch's in-batch negatives). The loop is written out rather than
delegated to ``SentenceTransformerTrainer`` so that an MoE model can route
each batch to its domain's expert, and so that it needs no Hugging Face
``datasets`` install.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retk.training.data import TrainingExample
from retk.training.sampler import NoDuplicatesBatchSampler

logger = logging.getLogger(__name__)

Tokenize = Callable[[list[str]], dict[str, Any]]
Route = Callable[["str | None"], AbstractContextManager]
Evaluate = Callable[[], dict[str, float]]
SaveModel = Callable[[Path], None]
CHECKPOINT_FOLDER = "checkpoints"
HISTORY_NAME = "training.json"


@dataclass
class TrainingSettings:
    """Hyperparameters of one contrastive training run.

    ``scale`` is MultipleNegativesRankingLoss's inverse temperature (20
    means a temperature of 0.05). ``cached`` selects
    CachedMultipleNegativesRankingLoss, which embeds ``mini_batch_size``
    texts at a time so ``batch_size`` can exceed what fits in memory.
    ``negatives`` caps the hard negatives used per example; a batch uses
    the smallest count among its examples, because the loss needs the same
    number of columns for every row. ``eval_steps`` and ``checkpoint_steps``
    of 0 mean "at the end of each epoch" and "never" respectively.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    scale: float = 20.0
    cached: bool = False
    mini_batch_size: int = 16
    negatives: int | None = None
    group_by_domain: bool = False
    max_seq_length: int | None = None
    eval_steps: int = 0
    checkpoint_steps: int = 0
    keep_checkpoints: int = 2
    max_steps: int | None = None
    log_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "mini_batch_size", "log_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainingHistory:
    """Loss per logged step, held-out metrics per evaluation, and timing."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    steps: int = 0
    examples_seen: int = 0
    seconds: float = 0.0
    skipped_examples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_loss(model: nn.Module, settings: TrainingSettings) -> nn.Module:
    """Return MultipleNegativesRankingLoss, or its cached variant when ``settings.cached``."""
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )

    if settings.cached:
        return CachedMultipleNegativesRankingLoss(model, scale=settings.scale, mini_batch_size=settings.mini_batch_size)
    return MultipleNegativesRankingLoss(model, scale=settings.scale)


def fit(
    model: nn.Module,
    tokenize: Tokenize,
    examples: Sequence[TrainingExample],
    settings: TrainingSettings,
    output: Path,
    *,
    save: SaveModel,
    route: Route | None = None,
    evaluate: Evaluate | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingHistory:
    """Train ``model`` in place on ``examples`` and return the history.

    ``model(features)`` must return a dict with ``"sentence_embedding"``, as
    a SentenceTransformer does. ``route(domain)`` returns a context in
    which the model routes every input to that domain's expert; the loss's
    backward pass runs inside it too, because the cached loss re-embeds
    mini-batches during backward. ``evaluate()`` runs on the held-out split
    with the model in eval mode. Checkpoints go to
    ``output/checkpoints/step-N``; ``output/training.json`` holds the
    settings and history. ``progress(step, total_steps, loss)`` is called
    after each step.
    """
    _seed_everything(settings.seed)
    sampler = NoDuplicatesBatchSampler(
        examples, settings.batch_size, group_by_domain=settings.group_by_domain, seed=settings.seed
    )
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * settings.epochs
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    if total_steps == 0:
        raise ValueError("no training batches: the examples are empty or all repeat a text")
    loss_function = build_loss(model, settings)
    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = _linear_schedule(optimizer, math.ceil(total_steps * settings.warmup_ratio), total_steps)
    history = TrainingHistory(skipped_examples=sampler.skipped)
    route = route or (lambda domain: nullcontext())
    started = time.perf_counter()
    running: list[float] = []
    logger.info("training on %d examples: %d steps of batch size %d", len(examples), total_steps, settings.batch_size)
    for epoch in range(settings.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for indices in sampler:
            batch = [examples[i] for i in indices]
            loss_value = _train_step(model, tokenize, batch, settings, loss_function, route, device)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history.steps += 1
            history.examples_seen += len(batch)
            running.append(loss_value)
            if progress is not None:
                progress(history.steps, total_steps, loss_value)
            if history.steps % settings.log_steps == 0 or history.steps == total_steps:
                history.losses.append((history.steps, float(np.mean(running))))
                logger.info("step %d/%d loss %.4f", history.steps, total_steps, history.losses[-1][1])
                running = []
            if settings.eval_steps and evaluate is not None and history.steps % settings.eval_steps == 0:
                _evaluate(model, evaluate, history)
            if settings.checkpoint_steps and history.steps % settings.checkpoint_steps == 0:
                _checkpoint(model, save, output, history.steps, settings.keep_checkpoints)
            if history.steps == total_steps:
                break
        if evaluate is not None and not settings.eval_steps:
            _evaluate(model, evaluate, history)
        if history.steps == total_steps:
            break
    if evaluate is not None and settings.eval_steps and (not history.evaluations or history.evaluations[-1][0] != history.steps):
        _evaluate(model, evaluate, history)
    model.eval()
    history.seconds = round(time.perf_counter() - started, 2)
    return history


def write_history(output: Path, settings: TrainingSettings, history: TrainingHistory, **details: Any) -> None:
    """Write the settings, the history and any ``details`` to ``output/training.json``."""
    record = {"settings": asdict(settings), "history": history.to_dict(), **details}
    (output / HISTORY_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def prepare_output(output: Path, overwrite: bool) -> None:
    """Create the output folder, refusing to mix a new model into a non-empty one unless ``overwrite``."""
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            from retk.errors import RetkError

            raise RetkError(f"{output} already exists and is not empty; pass --overwrite to replace it")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def batch_columns(batch: Sequence[TrainingExample], negatives: int | None) -> list[list[str]]:
    """Return the anchor, positive and negative columns of a batch, with equal negative counts."""
    count = min(len(example.negatives) for example in batch)
    if negatives is not None:
        count = min(count, negatives)
    columns = [[example.anchor for example in batch], [example.positive for example in batch]]
    columns += [[example.negatives[j] for example in batch] for j in range(count)]
    return columns


def batch_domain(batch: Sequence[TrainingExample]) -> str | None:
    """Return the single domain of a batch; a batch mixing domains cannot be routed as one."""
    domains = {example.domain for example in batch}
    if len(domains) > 1:
        raise ValueError(f"batch mixes domains {sorted(map(str, domains))}; train with group_by_domain")
    return domains.pop()


def _train_step(
    model: nn.Module,
    tokenize: Tokenize,
    batch: Sequence[TrainingExample],
    settings: TrainingSettings,
    loss_function: nn.Module,
    route: Route,
    device: str | torch.device,
) -> float:
    features = [_to_device(tokenize(column), device) for column in batch_columns(batch, settings.negatives)]
    domain = batch_domain(batch) if settings.group_by_domain else None
    with route(domain):
        loss = loss_function(features, None)
        loss.backward()
    return float(loss.detach())


def _evaluate(model: nn.Module, evaluate: Evaluate, history: TrainingHistory) -> None:
    model.eval()
    with torch.no_grad():
        metrics = evaluate()
    model.train()
    history.evaluations.append((history.steps, metrics))
    shown = ", ".join(f"{name} {value:.4f}" for name, value in metrics.items() if "/" not in name)
    logger.info("step %d held-out: %s", history.steps, shown)


def _checkpoint(model: nn.Module, save: SaveModel, output: Path, step: int, keep: int) -> None:
    folder = output / CHECKPOINT_FOLDER / f"step-{step}"
    folder.mkdir(parents=True, exist_ok=True)
    model.eval()
    save(folder)
    model.train()
    logger.info("saved checkpoint %s", folder)
    existing = sorted((output / CHECKPOINT_FOLDER).glob("step-*"), key=lambda path: int(path.name.split("-")[1]))
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and LayerNorm weights are not decayed, as in BERT's original fine-tuning recipe.
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (plain if parameter.ndim < 2 or "LayerNorm" in name else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_device(features: dict[str, Any], device: str | torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in features.items()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def iterate_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
