"""Contrastive fine-tuning of a sentence-transformers bi-encoder.

The loss is MultipleNegativesRankingLoss (InfoNCE with in-batch negatives:
for each anchor, its positive must score above every other positive and hard
negative in the batch), from van den Oord et al., "Representation Learning
with Contrastive Predictive Coding" (2018), as implemented in
sentence-transformers. Batches never repeat a text, so no in-batch negative
is a copy of the positive. The saved folder is a plain sentence-transformers
model, so ``retk index --encoder PATH`` and ``SentenceTransformer(PATH)``
both load it.

Example::

    examples = pairs_from_qrels(BeirDataset.open("datasets/scifact"), "train")
    history = train_contrastive("minilm", examples, "models/scifact-minilm",
                                TrainingSettings(epochs=1, batch_size=32))
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retk.embeddings.devices import default_device
from retk.embeddings.registry import ENCODER_ALIASES
from retk.embeddings.sentence_transformer import resolve_model_path
from retk.training.data import TrainingExample
from retk.training.evaluation import HeldOutEvaluator
from retk.training.loop import TrainingHistory, TrainingSettings, fit, prepare_output, write_history

logger = logging.getLogger(__name__)


def load_sentence_transformer(model: str, *, device: str | None = None, max_seq_length: int | None = None) -> Any:
    """Load a sentence-transformers model from a retk alias (``minilm``), a bundled name or a local folder."""
    from sentence_transformers import SentenceTransformer

    name = ENCODER_ALIASES.get(model, {}).get("model", model)
    loaded = SentenceTransformer(resolve_model_path(name), device=device or default_device(), local_files_only=True)
    if max_seq_length is not None:
        loaded.max_seq_length = max_seq_length
    return loaded


def sentence_transformer_tokenizer(model: Any) -> Callable[[list[str]], dict[str, Any]]:
    """Return the model's text-to-features function (``preprocess``, or ``tokenize`` before sentence-transformers 5.2)."""
    return getattr(model, "preprocess", None) or model.tokenize


def train_contrastive(
    model: str,
    examples: Sequence[TrainingExample],
    output: str | Path,
    settings: TrainingSettings | None = None,
    *,
    held_out: Sequence[TrainingExample] = (),
    device: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingHistory:
    """Fine-tune ``model`` on ``examples`` and save it to ``output``.

    ``model`` is ``minilm`` or a local sentence-transformers folder.
    ``held_out`` pairs are scored (nDCG@10, MRR@10, Recall@100 among the
    held-out positives) during training, per ``settings.eval_steps``.
    ``output`` receives the model, ``training.json`` and, with
    ``settings.checkpoint_steps``, ``checkpoints/step-N`` folders.
    """
    settings = settings or TrainingSettings()
    output = Path(output)
    if not examples:
        raise ValueError("no training examples")
    prepare_output(output, overwrite)
    device = device or default_device()
    transformer = load_sentence_transformer(model, device=device, max_seq_length=settings.max_seq_length)
    evaluate = None
    if held_out:
        evaluator = HeldOutEvaluator(held_out)
        evaluate = lambda: evaluator(lambda texts, domain: _encode(transformer, texts, settings.batch_size))  # noqa: E731
    history = fit(
        transformer,
        sentence_transformer_tokenizer(transformer),
        examples,
        settings,
        output,
        save=lambda folder: transformer.save(str(folder)),
        evaluate=evaluate,
        device=device,
        progress=progress,
    )
    transformer.save(str(output))
    write_history(output, settings, history, base_model=model, examples=len(examples), held_out=len(held_out), kind="contrastive")
    logger.info("saved fine-tuned model to %s", output)
    return history


def _encode(transformer: Any, texts: list[str], batch_size: int) -> np.ndarray:
    return transformer.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
