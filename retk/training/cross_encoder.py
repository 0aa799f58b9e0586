"""Train a cross-encoder reranker (the DSE teacher) on qrels with BM25-mined hard negatives.

No pretrained cross-encoder weights can be downloaded here, so the teacher
starts from a BERT-family encoder (by default the bundled all-MiniLM-L6-v2
bi-encoder, whose transformer becomes a ``BertForSequenceClassification``
with a new one-logit head) and learns relevance from (query, positive,
hard negatives) groups. A user with a pretrained cross-encoder passes its
folder as ``model`` and continues training it, or skips training and
reranks with it directly.

Two losses are available, one small function each:

- ``bce``: binary cross-entropy on every pair, positives weighted by the
  number of negatives so both classes weigh the same (sentence-transformers'
  ``BinaryCrossEntropyLoss`` recipe for rerankers with hard negatives). Its
  logits are calibrated on an absolute scale, which suits MSE distillation.
- ``listwise``: softmax cross-entropy over each group with the positive as
  the target; only score differences within a query matter.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retk.datasets import BeirDataset
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, resolve_model_path
from retk.errors import RetkError
from retk.retrieval.atomic import atomic_directory
from retk.training.data import TrainingExample, mine_hard_negatives, pairs_from_qrels

logger = logging.getLogger(__name__)

TRAINING_RECORD = "retk_training.json"
MODEL_ALIASES = {"minilm": DEFAULT_MODEL, "default": DEFAULT_MODEL, "all-MiniLM-L6-v2": DEFAULT_MODEL}
StepProgress = Callable[[int, int, float], None]


@dataclass
class CrossEncoderSettings:
    """Hyperparameters of ``retk train cross-encoder``.

    ``batch_size`` counts queries per step; each brings its positive and up
    to ``negatives`` hard negatives mined from the top ``mining_depth`` BM25
    hits, so a step scores ``batch_size * (1 + negatives)`` pairs.
    ``max_length`` truncates each (query, document) pair, in tokens.
    ``max_examples`` keeps a seeded random sample of the training pairs.
    """

    model: str = DEFAULT_MODEL
    split: str = "train"
    loss: str = "bce"
    negatives: int = 4
    mining_depth: int = 30
    epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    max_examples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in GROUP_LOSSES:
            raise ValueError(f"unknown cross-encoder loss '{self.loss}'; expected one of {', '.join(GROUP_LOSSES)}")
        for name in ("negatives", "mining_depth", "epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


def bce_group_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the valid pairs, positives weighted by the negatives per positive.

    ``logits``, ``labels`` (1 for the positive column, 0 elsewhere) and
    ``valid`` (False for padding) are ``(groups, 1 + negatives)``.
    """
    positives = labels[valid].sum().clamp(min=1)
    weight = ((valid.sum() - positives) / positives).clamp(min=1.0)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid], pos_weight=weight)


def listwise_group_loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of each group with its positive (column 0) as the target."""
    masked = logits.masked_fill(~valid, float("-inf"))
    return torch.nn.functional.cross_entropy(masked, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


GROUP_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": bce_group_loss,
    "listwise": listwise_group_loss,
}


def resolve_model(spec: str) -> str:
    """Turn ``minilm`` or ``bundled:all-MiniLM-L6-v2`` into the bundled folder; other paths pass through."""
    return resolve_model_path(MODEL_ALIASES.get(spec, spec))


def mined_training_examples(
    dataset: BeirDataset,
    *,
    split: str = "train",
    negatives: int = 4,
    mining_depth: int = 30,
    negatives_index: Any = None,
    max_examples: int | None = None,
    seed: int = 0,
) -> list[TrainingExample]:
    """Return the qrels pairs of ``split`` with hard negatives from ``negatives_index``.

    Without an index, a BM25 index of the dataset's corpus is built in a
    temporary folder (seconds for SciFact's 5,183 documents).
    """
    import tempfile

    from retk.retrieval import Index, build_index

    examples = pairs_from_qrels(dataset, split)
    if max_examples is not None and max_examples < len(examples):
        examples = random.Random(seed).sample(examples, max_examples)
    if negatives_index is not None:
        index = negatives_index if isinstance(negatives_index, Index) else Index.open(negatives_index)
        return mine_hard_negatives(examples, index, count=negatives, depth=mining_depth)
    with tempfile.TemporaryDirectory(prefix="retk-negatives-") as folder:
        index = build_index(dataset.root, Path(folder) / "bm25", "bm25")
        return mine_hard_negatives(examples, index, count=negatives, depth=mining_depth)


def load_cross_encoder_for_training(model: str, max_length: int, device: str | None = None) -> Any:
    """Load ``model`` as a one-logit CrossEncoder; a bi-encoder or plain BERT folder gets a new head."""
    from sentence_transformers import CrossEncoder

    from retk.embeddings.devices import default_device

    path = resolve_model(model)
    if not Path(path).is_dir():
        raise RetkError(f"model '{model}' is not a local folder; pass a BERT-family or cross-encoder folder (nothing is downloaded)")
    return CrossEncoder(path, num_labels=1, max_length=max_length, device=device or default_device(), local_files_only=True)


def fit_cross_encoder(
    model: Any,
    examples: Sequence[TrainingExample],
    settings: CrossEncoderSettings,
    *,
    progress: StepProgress | None = None,
) -> dict[str, Any]:
    """Train the CrossEncoder ``model`` in place on (anchor, positive, negatives) groups.

    Returns a history with the mean loss per epoch, the step count and seconds.
    """
    usable = [example for example in examples if example.negatives]
    if not usable:
        raise RetkError("no training example has a hard negative; check the qrels and the mining index")
    _seed_everything(settings.seed)
    loss_function = GROUP_LOSSES[settings.loss]
    steps_per_epoch = math.ceil(len(usable) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(_parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
    scheduler = _linear_schedule(optimizer, math.ceil(total_steps * settings.warmup_ratio), total_steps)
    order = list(range(len(usable)))
    shuffler = random.Random(settings.seed)
    history: dict[str, Any] = {"epoch_losses": [], "steps": 0, "examples": len(usable), "skipped_without_negatives": len(examples) - len(usable)}
    started = time.perf_counter()
    model.train()
    for _ in range(settings.epochs):
        shuffler.shuffle(order)
        losses = []
        for start in range(0, len(order), settings.batch_size):
            batch = [usable[i] for i in order[start : start + settings.batch_size]]
            loss = _group_step(model, batch, settings.negatives, loss_function)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history["steps"] += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(history["steps"], total_steps, losses[-1])
        history["epoch_losses"].append(float(np.mean(losses)))
        logger.info("cross-encoder epoch loss %.4f", history["epoch_losses"][-1])
    model.eval()
    history["seconds"] = round(time.perf_counter() - started, 2)
    return history


def train_cross_encoder(
    dataset: BeirDataset | str | Path,
    out: str | Path,
    settings: CrossEncoderSettings | None = None,
    *,
    negatives_index: Any = None,
    overwrite: bool = False,
    progress: StepProgress | None = None,
) -> Path:
    """Train a cross-encoder on ``dataset``'s qrels and write it to ``out`` atomically.

    ``out`` is an ordinary sentence-transformers CrossEncoder folder, loadable
    by ``CrossEncoder(out)`` and by ``retk search/eval --rerank out``; it also
    holds ``retk_training.json`` with the settings and the loss history.
    """
    settings = settings or CrossEncoderSettings()
    dataset = dataset if isinstance(dataset, BeirDataset) else BeirDataset.open(dataset)
    examples = mined_training_examples(
        dataset,
        split=settings.split,
        negatives=settings.negatives,
        mining_depth=settings.mining_depth,
        negatives_index=negatives_index,
        max_examples=settings.max_examples,
        seed=settings.seed,
    )
    model = load_cross_encoder_for_training(settings.model, settings.max_length)
    history = fit_cross_encoder(model, examples, settings, progress=progress)
    with atomic_directory(out, overwrite=overwrite) as folder:
        model.save(str(folder))
        record = {"method": "cross-encoder", "dataset": dataset.name, "settings": asdict(settings), "history": history}
        (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote cross-encoder to %s", out)
    return Path(out)


def _group_step(model: Any, batch: Sequence[TrainingExample], negatives: int, loss_function: Callable) -> torch.Tensor:
    width = 1 + negatives
    pairs, positions = [], []
    for row, example in enumerate(batch):
        for column, document in enumerate((example.positive, *example.negatives[:negatives])):
            pairs.append((example.anchor, document))
            positions.append(row * width + column)
    # NOTE: preprocess() and the "scores" output are the sentence-transformers 6 CrossEncoder API; only 6.3 was run.
    features = _to_device(model.preprocess(pairs), model.device)
    scores = model(features)["scores"].reshape(-1).float()
    # Groups with fewer mined negatives are padded; the padding is masked out of the loss.
    logits = scores.new_zeros(len(batch) * width).index_copy(0, torch.tensor(positions, device=scores.device), scores)
    valid = torch.zeros(len(batch) * width, dtype=torch.bool, device=scores.device)
    valid[positions] = True
    labels = torch.zeros(len(batch), width, device=scores.device)
    labels[:, 0] = 1.0
    return loss_function(logits.view(len(batch), width), labels, valid.view(len(batch), width))


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # Biases and LayerNorm weights are not decayed, as in BERT's fine-tuning recipe.
    decayed, plain = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (plain if parameter.ndim < 2 or "LayerNorm" in name else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _to_device(features: dict[str, Any], device: Any) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in features.items()}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
