"""Train an MoE bi-encoder: convert a base model, train experts with enforced routing, then the router."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from retk.embeddings.devices import default_device
from retk.errors import RetkError
from retk.training.contrastive import load_sentence_transformer
from retk.training.data import TrainingExample
from retk.training.evaluation import HeldOutEvaluator
from retk.training.loop import TrainingHistory, TrainingSettings, fit, prepare_output, write_history
from retk.training.moe.model import MoEModel
from retk.training.moe.router import RouterSettings, train_router

logger = logging.getLogger(__name__)


def train_moe(
    model: str,
    examples: Sequence[TrainingExample],
    output: str | Path,
    settings: TrainingSettings | None = None,
    *,
    domains: Sequence[str] | None = None,
    expert_layers: str | int | Sequence[int] = "all",
    router: RouterSettings | None = None,
    held_out: Sequence[TrainingExample] = (),
    device: str | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainingHistory:
    """Convert ``model`` to one expert per domain, train it on ``examples`` and save it to ``output``.

    Every example needs a domain; ``domains`` fixes the expert order
    (default: the examples' domains, sorted). Batches hold a single domain
    and run through that domain's expert only (enforced routing), so each
    expert's weights receive gradients from its own domain alone; the
    shared attention and embedding weights learn from every domain. The
    router is fitted afterwards (see :func:`train_router`). Held-out pairs
    are scored with enforced routing during training and once more with the
    router at the end (``router/<metric>`` entries in the last evaluation).
    """
    settings = dataclasses.replace(settings or TrainingSettings(), group_by_domain=True)
    output = Path(output)
    missing = sum(example.domain is None for example in examples)
    if missing:
        raise RetkError(f"{missing} training examples have no domain; MoE training routes every example by its domain")
    domains = list(domains) if domains is not None else sorted({example.domain for example in examples})
    unknown = sorted({example.domain for example in (*examples, *held_out)} - set(domains) - {None})
    if unknown:
        raise RetkError(f"examples name domains {unknown} that are not among the experts {domains}")
    prepare_output(output, overwrite)
    device = device or default_device()
    base = load_sentence_transformer(model, device=device, max_seq_length=settings.max_seq_length)
    moe = MoEModel.from_sentence_transformer(base, domains, expert_layers, base_model=model)
    logger.info("converted layers %s of %s into %d experts (%s)", moe.expert_layers, model, len(domains), ", ".join(domains))
    evaluator = HeldOutEvaluator(held_out) if held_out else None
    evaluate = None
    if evaluator is not None:
        evaluate = lambda: evaluator(lambda texts, domain: moe.encode(texts, domain=domain, batch_size=settings.batch_size))  # noqa: E731
    history = fit(
        moe,
        moe.tokenize,
        examples,
        settings,
        output,
        save=moe.save,
        route=moe.route,
        evaluate=evaluate,
        device=device,
        progress=progress,
    )
    history.extra.update(train_router(moe, examples, router, held_out=held_out))
    if evaluator is not None:
        routed = evaluator(lambda texts, domain: moe.encode(texts, domain=None, batch_size=settings.batch_size))
        history.evaluations.append((history.steps, {f"router/{name}": value for name, value in routed.items()}))
    moe.save(output)
    write_history(
        output,
        settings,
        history,
        base_model=model,
        examples=len(examples),
        held_out=len(held_out),
        kind="moe",
        domains=domains,
        expert_layers=moe.expert_layers,
        router=dataclasses.asdict(router or RouterSettings()),
    )
    logger.info("saved MoE model to %s", output)
    return history
