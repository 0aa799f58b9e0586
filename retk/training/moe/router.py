"""Train the MoE router: a linear domain classifier on the first expert layer's pooled input.

The router is trained after the experts, on the frozen encoder, with
cross-entropy against the domain labels of the training texts (anchors and
positives). Because the encoder is frozen, each text's router input is
computed once and the classifier is fitted on the cached vectors. Classes
are weighted by inverse frequency so that a large domain does not swallow a
small one.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from retk.training.data import TrainingExample
from retk.training.moe.layers import ExpertFeedForward
from retk.training.moe.model import MoEModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterSettings:
    """How many texts per domain feed the router, and the classifier's optimisation."""

    texts_per_domain: int = 2000
    steps: int = 300
    learning_rate: float = 1e-2
    batch_size: int = 64
    seed: int = 0


def router_texts(examples: Sequence[TrainingExample], domains: Sequence[str], per_domain: int, seed: int) -> tuple[list[str], list[int]]:
    """Return up to ``per_domain`` distinct texts (anchors and positives) of each domain, with expert labels."""
    generator = random.Random(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, domain in enumerate(domains):
        pool = list(dict.fromkeys(text for example in examples if example.domain == domain for text in (example.anchor, example.positive)))
        generator.shuffle(pool)
        chosen = pool[:per_domain]
        texts += chosen
        labels += [label] * len(chosen)
    return texts, labels


def router_inputs(model: MoEModel, texts: Sequence[str], batch_size: int) -> Tensor:
    """Return the router's input vectors (the masked mean of the first expert layer's input) for ``texts``."""
    vectors = []
    was_training = model.training
    model.eval()
    with torch.inference_mode(), model.route(None):
        for start in range(0, len(texts), batch_size):
            features = {key: value.to(model.device) for key, value in model.tokenize(list(texts[start:start + batch_size])).items()}
            model(features)
            vectors.append(model.routing.router_inputs.float().cpu())
    model.train(was_training)
    return torch.cat(vectors)


def train_router(
    model: MoEModel,
    examples: Sequence[TrainingExample],
    settings: RouterSettings | None = None,
    *,
    held_out: Sequence[TrainingExample] = (),
) -> dict[str, float]:
    """Fit the router with cross-entropy on the examples' domain labels; return train and held-out accuracy."""
    settings = settings or RouterSettings()
    router = first_router(model)
    texts, labels = router_texts(examples, model.domains, settings.texts_per_domain, settings.seed)
    if len(set(labels)) < 2:
        logger.warning("router trained on %d domain(s) only; it will always pick the same expert", len(set(labels)))
    inputs = router_inputs(model, texts, settings.batch_size)
    targets = torch.tensor(labels)
    counts = torch.bincount(targets, minlength=len(model.domains)).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * len(model.domains)), torch.zeros_like(counts))
    classifier = nn.Linear(inputs.shape[1], len(model.domains))
    classifier.load_state_dict({key: value.float().cpu() for key, value in router.state_dict().items()})
    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings.learning_rate)
    loss_function = nn.CrossEntropyLoss(weight=weights)
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.steps):
        rows = torch.randint(len(inputs), (min(256, len(inputs)),), generator=generator)
        loss = loss_function(classifier(inputs[rows]), targets[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        router.load_state_dict({key: value.to(router.weight.device, router.weight.dtype) for key, value in classifier.state_dict().items()})
        accuracy = {"router_train_accuracy": float((classifier(inputs).argmax(1) == targets).float().mean())}
    if held_out:
        held_texts, held_labels = router_texts(held_out, model.domains, settings.texts_per_domain, settings.seed)
        predicted = router_inputs(model, held_texts, settings.batch_size)
        with torch.no_grad():
            accuracy["router_held_out_accuracy"] = float((classifier(predicted).argmax(1) == torch.tensor(held_labels)).float().mean())
    logger.info("router: %s", ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items()))
    return accuracy


def first_router(model: MoEModel) -> nn.Linear:
    """Return the router of the model's first expert layer."""
    for module in model.modules():
        if isinstance(module, ExpertFeedForward) and module.router is not None:
            return module.router
    raise RuntimeError("the model has no router: no expert layer was converted with one")
