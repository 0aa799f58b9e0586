"""LoRA contrastive fine-tuning of a decoder-only encoder (``retk train llm``).

Each step encodes a batch of queries and, for every query, its positive and
its hard negatives with the :class:`~retk.embeddings.LLMEncoder` that will
later index with the result (same templates, pooling and EOS handling). The
loss is InfoNCE over every document of the batch (in-batch negatives plus
hard negatives): cross-entropy of ``q·d / temperature`` with the query's own
positive as the target, as in RepLLaMA (Ma et al., 2023, "Fine-Tuning LLaMA
for Multi-Stage Text Retrieval") and E5-Mistral. A document that is a known
positive of another query in the batch with the same anchor text is masked
out rather than counted as a negative.

Only LoRA weights (PEFT) are trained. ``layers`` restricts LoRA to the last
N transformer layers, so backpropagation stops there, which is what makes a
CPU run affordable. The output folder contains the adapter (or, with
``merge=True``, the merged model), a ``retk-encoder.json`` with the encoder
settings, and ``training.json`` with the configuration and the loss curve.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from retk.embeddings.gguf import BUNDLED_SMOLLM2
from retk.embeddings.llm import DEFAULT_DOCUMENT_TEMPLATE, ENCODER_SETTINGS_NAME, LLMEncoder
from retk.errors import RetkError
from retk.hardware import describe_hardware
from retk.retrieval.atomic import atomic_directory
from retk.training.data import TrainingExample

logger = logging.getLogger(__name__)

TRAINING_LOG_NAME = "training.json"
StepCallback = Callable[[int, int, float], None]


@dataclass
class LLMTrainingConfig:
    """Settings of one LoRA run; every field is saved in ``training.json``.

    ``max_steps`` stops early (None: ``epochs`` full passes). ``hard_negatives``
    is how many of each example's negatives enter the batch. ``layers`` puts
    LoRA on the last N layers only (None: every layer).
    """

    base_model: str = BUNDLED_SMOLLM2
    pooling: str = "last"
    instruction: str | None = None
    query_template: str | None = None
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE
    max_length: int = 256
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"
    layers: int | None = None
    learning_rate: float = 1e-4
    warmup_steps: int = 10
    batch_size: int = 8
    epochs: int = 1
    max_steps: int | None = None
    temperature: float = 0.02
    hard_negatives: int = 1
    gradient_checkpointing: bool = True
    merge: bool = False
    seed: int = 0
    dtype: str = "auto"


@dataclass
class LLMTrainingResult:
    """Result of one run: the output folder, the number of steps and the loss of each step."""

    path: Path
    steps: int
    losses: list[float]
    seconds: float


def contrastive_loss(
    queries: torch.Tensor, documents: torch.Tensor, masked: torch.Tensor, temperature: float
) -> torch.Tensor:
    """InfoNCE loss where query ``i``'s positive is document ``i``.

    ``documents`` contains the batch's positives first (row ``i`` for query
    ``i``) and then every hard negative. ``masked`` is a boolean ``(queries,
    documents)`` matrix of known positives to leave out of the softmax.
    """
    scores = queries @ documents.T / temperature
    scores = scores.masked_fill(masked, float("-inf"))
    targets = torch.arange(len(queries), device=queries.device)
    return torch.nn.functional.cross_entropy(scores, targets)


def train_llm(
    examples: Sequence[TrainingExample],
    out: str | Path,
    config: LLMTrainingConfig | None = None,
    *,
    overwrite: bool = False,
    on_step: StepCallback | None = None,
) -> LLMTrainingResult:
    """Fine-tune ``config.base_model`` with LoRA on ``examples`` and save the adapter or merged model in ``out``.

    ``on_step(step, total_steps, loss)`` is called after each optimizer step.
    The folder appears only when complete. Load it with
    ``retk.embeddings.load_encoder(out)`` or ``retk index --encoder OUT``.
    """
    config = config or LLMTrainingConfig()
    if not examples:
        raise RetkError("no training examples")
    if config.batch_size < 2:
        raise RetkError(f"batch size must be at least 2 for in-batch negatives, got {config.batch_size}")
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    encoder = LLMEncoder(
        config.base_model,
        pooling=config.pooling,
        instruction=config.instruction,
        query_template=config.query_template,
        document_template=config.document_template,
        max_length=config.max_length,
        dtype=config.dtype,
    )
    encoder.model = _with_lora(encoder.model, config)
    batches = _batches(examples, config)
    total = len(batches) if config.max_steps is None else min(len(batches), config.max_steps)
    trainable = [parameter for parameter in encoder.model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _linear_warmup_decay(config.warmup_steps, total))
    positives_of = _positives_by_anchor(examples)
    logger.info(
        "training %s: %d examples, %d steps of %d, %d trainable parameters",
        encoder.name, len(examples), total, config.batch_size, sum(p.numel() for p in trainable),
    )

    losses: list[float] = []
    started = time.perf_counter()
    encoder.model.train()
    for step, batch in enumerate(batches[:total], start=1):
        loss = _step_loss(encoder, batch, positives_of, config)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 5))
        logger.info("step %d/%d loss %.4f", step, total, losses[-1])
        if on_step is not None:
            on_step(step, total, losses[-1])
    seconds = time.perf_counter() - started

    encoder.model.eval()
    log = {
        "config": asdict(config),
        "examples": len(examples),
        "steps": total,
        "losses": losses,
        "seconds": round(seconds, 1),
        "hardware": describe_hardware(),
    }
    with atomic_directory(out, overwrite=overwrite) as folder:
        _save(encoder, folder, config)
        (folder / TRAINING_LOG_NAME).write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    logger.info("saved %s to %s after %.0f s", "merged model" if config.merge else "LoRA adapter", out, seconds)
    return LLMTrainingResult(path=Path(out), steps=total, losses=losses, seconds=seconds)


def _with_lora(model: torch.nn.Module, config: LLMTrainingConfig) -> torch.nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RetkError("LoRA training needs the 'peft' package; install retk[llm]") from None
    layers = None
    if config.layers is not None:
        count = int(model.config.num_hidden_layers)
        if not 1 <= config.layers <= count:
            raise RetkError(f"layers must be between 1 and {count} for this model, got {config.layers}")
        layers = list(range(count - config.layers, count))
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs, so no input-grad hook is needed.
        # transformers 5 renamed gradient checkpointing to activation checkpointing.
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    target_modules = config.target_modules
    if layers is not None:
        # Full module names select the layers. PEFT's layers_to_transform (0.21) needs
        # a ".layers." infix, which a bare base model's names ("layers.N...") lack.
        target_modules = _linear_modules_in_layers(model, set(layers), config.target_modules)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        bias="none",
    )
    return get_peft_model(model, lora)


def _linear_modules_in_layers(model: torch.nn.Module, layers: set[int], wanted: list[str] | str) -> list[str]:
    names = []
    for name, module in model.named_modules():
        parts = name.split(".")
        in_layer = any(part == "layers" and index + 1 < len(parts) and parts[index + 1].isdigit() and int(parts[index + 1]) in layers for index, part in enumerate(parts))
        if in_layer and isinstance(module, torch.nn.Linear) and (wanted == "all-linear" or parts[-1] in wanted):
            names.append(name)
    if not names:
        raise RetkError(f"no linear modules named {wanted} found in layers {sorted(layers)}")
    return names


def _batches(examples: Sequence[TrainingExample], config: LLMTrainingConfig) -> list[list[TrainingExample]]:
    batches = []
    for epoch in range(config.epochs):
        order = list(examples)
        random.Random(config.seed + epoch).shuffle(order)
        # A last batch of one example has no in-batch negative, so it is dropped.
        batches += [order[start : start + config.batch_size] for start in range(0, len(order) - 1, config.batch_size)]
    return [batch for batch in batches if len(batch) > 1]


def _positives_by_anchor(examples: Sequence[TrainingExample]) -> dict[str, set[str]]:
    positives: dict[str, set[str]] = {}
    for example in examples:
        positives.setdefault(example.anchor, set()).add(example.positive)
    return positives


def _step_loss(
    encoder: LLMEncoder, batch: list[TrainingExample], positives_of: dict[str, set[str]], config: LLMTrainingConfig
) -> torch.Tensor:
    documents = [example.positive for example in batch]
    for example in batch:
        documents += list(example.negatives[: config.hard_negatives])
    masked = torch.tensor(
        [[column != row and text in positives_of[example.anchor] for column, text in enumerate(documents)] for row, example in enumerate(batch)],
        dtype=torch.bool,
        device=encoder.device,
    )
    query_vectors = encoder.embed(encoder.pad(encoder.token_ids(encoder.format_queries([e.anchor for e in batch]))))
    document_vectors = encoder.embed(encoder.pad(encoder.token_ids(encoder.format_documents(documents))))
    return contrastive_loss(query_vectors, document_vectors, masked, config.temperature)


def _linear_warmup_decay(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _save(encoder: LLMEncoder, folder: Path, config: LLMTrainingConfig) -> None:
    settings = {"settings": encoder.settings(), "adapter_of": None}
    if config.merge:
        merged = encoder.model.merge_and_unload()
        merged.save_pretrained(folder)
        encoder.tokenizer.save_pretrained(folder)
    else:
        encoder.model.save_pretrained(folder)
        settings["adapter_of"] = config.base_model
    (folder / ENCODER_SETTINGS_NAME).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
