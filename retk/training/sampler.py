"""A batch sampler that never puts the same text twice in one batch.

With in-batch negatives every other positive in the batch is a negative for
each anchor. A text that appears twice (the same document relevant to two
queries, two queries with the same wording, a hard negative that is another
example's positive) therefore becomes a false negative. The sampler fills
each batch greedily from a shuffled order and defers an example whose anchor,
positive or any negative is already in the batch to a later batch, like
sentence-transformers' ``NoDuplicatesBatchSampler``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence

from retk.training.data import TrainingExample

logger = logging.getLogger(__name__)


class NoDuplicatesBatchSampler:
    """Yield lists of example indices with no text repeated inside a batch.

    ``group_by_domain`` makes every batch hold a single domain, so in-batch
    negatives come from the same domain and an MoE model can route the
    whole batch to one expert. Batch order is shuffled across domains.
    Examples that repeat a text among their own anchor, positive and
    negatives can never satisfy the rule and are left out, counted in
    :attr:`skipped`. Call :meth:`set_epoch` before each epoch for a new
    order; the order depends only on ``seed`` and the epoch.

    Example::

        sampler = NoDuplicatesBatchSampler(examples, batch_size=32, group_by_domain=True)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for indices in sampler:
                batch = [examples[i] for i in indices]
    """

    def __init__(
        self,
        examples: Sequence[TrainingExample],
        batch_size: int,
        *,
        group_by_domain: bool = False,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.group_by_domain = group_by_domain
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        self._texts: list[frozenset[str]] = []
        self._usable: list[int] = []
        self.skipped = 0
        for position, example in enumerate(examples):
            texts = example.texts()
            unique = frozenset(texts)
            self._texts.append(unique)
            if len(unique) == len(texts):
                self._usable.append(position)
            else:
                self.skipped += 1
        self._domains = [example.domain for example in examples]
        if self.skipped:
            logger.warning("left out %d examples that repeat a text among their own anchor, positive and negatives", self.skipped)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Return this epoch's batches of example indices."""
        generator = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(self._usable)
        generator.shuffle(order)
        if self.group_by_domain:
            groups: dict[str | None, list[int]] = {}
            for position in order:
                groups.setdefault(self._domains[position], []).append(position)
            batches = [batch for group in groups.values() for batch in self._fill(group)]
            generator.shuffle(batches)
        else:
            batches = self._fill(order)
        return batches

    def _fill(self, order: list[int]) -> list[list[int]]:
        batches = []
        remaining = order
        while remaining:
            batch: list[int] = []
            seen: set[str] = set()
            deferred: list[int] = []
            for position in remaining:
                texts = self._texts[position]
                if len(batch) < self.batch_size and seen.isdisjoint(texts):
                    batch.append(position)
                    seen |= texts
                else:
                    deferred.append(position)
            remaining = deferred
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())
