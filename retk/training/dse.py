"""Distilled Sentence Embedding (DSE): train a bi-encoder student on a cross-encoder teacher's scores.

Barkan et al., "Scalable Attentive Sentence-Pair Modeling via Distilled
Sentence Embedding", AAAI 2020 (arXiv:1908.05161), train a student whose
pair score is computed from two independent sentence embeddings, with the
loss ``(1 - c) * task loss + c * mean squared error between the student's
score and the teacher's logit`` and ``c = 0.5``. retk applies it to
retrieval. The task loss is the in-batch contrastive loss
(MultipleNegativesRankingLoss), and the student's score of a (query,
document) pair is ``scale * cos(q, d)``. The teacher is a cross-encoder
whose logits for every (query, positive) and (query, hard negative) pair
are computed once and cached on disk.

Score calibration. Teacher logits and student scores live on different
scales. A cross-encoder's logits are unbounded, while the student's
``scale * cos`` lies in [-scale, scale] and starts near the base model's
cosines. The MSE target is therefore an affine map of the teacher logit,
``target = slope * logit + intercept``, fixed before training:

- ``student`` (default): standardise the logits over all cached pairs and
  give them the mean and standard deviation that the untrained student's
  scores have on a sample of the same pairs. The student is asked to
  reorder its scores as the teacher does without changing their overall
  scale, which the contrastive term also acts on.
- ``none``: the raw logit is the target (slope 1, intercept 0).

An affine map with a positive slope never changes the teacher's ranking.
Margin-MSE (Hofstätter et al., arXiv:2010.02666) compares score differences
``s(q, d+) - s(q, d-)`` with ``slope * (t(q, d+) - t(q, d-))`` instead, so
the intercept cancels and each query's score offset is free.

The student is an ordinary sentence-transformers folder that ``retk index
--encoder PATH`` accepts; queries and documents are L2-normalised there, as
in training.
"""

from __future__ import annotations

import hashlib
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
import torch.nn.functional as F

from retk.config import cache_dir as default_cache_dir
from retk.datasets import BeirDataset
from retk.embeddings.sentence_transformer import DEFAULT_MODEL
from retk.errors import RetkError
from retk.retrieval.atomic import atomic_directory
from retk.training.cross_encoder import (
    TRAINING_RECORD,
    _linear_schedule,
    _parameter_groups,
    _seed_everything,
    _to_device,
    mined_training_examples,
    resolve_model,
)
from retk.training.data import TrainingExample

logger = logging.getLogger(__name__)

CACHE_FOLDER = "dse-teacher-scores"
# Files of a model folder that do not change its scores (model cards, training records).
UNSCORED_FILES = {"README.md", TRAINING_RECORD}
StepProgress = Callable[[int, int, float], None]
PairProgress = Callable[[int, int], None]


@dataclass
class DSESettings:
    """Hyperparameters of ``retk train dse``.

    ``c`` weighs the distillation term: 0 trains with the contrastive loss
    only, 1 with distillation only. ``distillation`` is ``mse`` (score
    against calibrated logit) or ``margin-mse``. ``scale`` multiplies the
    cosine into the student's score (20 is a softmax temperature of 0.05).
    ``batch_size`` counts queries per step, each with its positive and up to
    ``negatives`` hard negatives, all of which are in-batch negatives for
    the other queries. ``max_seq_length`` (student) and
    ``teacher_max_length`` are in tokens. ``calibration_sample`` is the
    number of examples whose pairs the untrained student scores to measure
    the calibration.
    """

    student: str = DEFAULT_MODEL
    c: float = 0.5
    distillation: str = "mse"
    calibration: str = "student"
    scale: float = 20.0
    split: str = "train"
    negatives: int = 4
    mining_depth: int = 30
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_seq_length: int = 256
    teacher_max_length: int = 256
    teacher_batch_size: int = 32
    calibration_sample: int = 256
    max_examples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.c <= 1.0:
            raise ValueError(f"c must be in [0, 1], got {self.c}")
        if self.distillation not in DISTILLATION_LOSSES:
            raise ValueError(f"unknown distillation loss '{self.distillation}'; expected one of {', '.join(DISTILLATION_LOSSES)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration '{self.calibration}'; expected one of {', '.join(CALIBRATIONS)}")
        for name in ("negatives", "mining_depth", "epochs", "batch_size", "max_seq_length", "teacher_max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Calibration:
    """The affine map ``target = slope * teacher_logit + intercept`` and the statistics it came from."""

    slope: float = 1.0
    intercept: float = 0.0
    method: str = "none"
    teacher_mean: float | None = None
    teacher_std: float | None = None
    student_mean: float | None = None
    student_std: float | None = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.slope * logits + self.intercept


def calibrate_to_student(teacher_logits: np.ndarray, student_scores: np.ndarray) -> Calibration:
    """Map logits to the student's score scale: standardise, then rescale to the student's mean and std."""
    # NOTE: a nearly constant teacher gets a large slope, which amplifies its noise into the targets.
    # Check that the teacher reranks well before distilling it.
    teacher_mean, teacher_std = float(np.mean(teacher_logits)), float(np.std(teacher_logits))
    student_mean, student_std = float(np.mean(student_scores)), float(np.std(student_scores))
    if teacher_std == 0.0:
        raise RetkError("all cached teacher logits are equal, so they carry no ranking to distil; check the teacher")
    slope = student_std / teacher_std
    return Calibration(slope, student_mean - slope * teacher_mean, "student", teacher_mean, teacher_std, student_mean, student_std)


CALIBRATIONS = ("student", "none")


# --- the loss -------------------------------------------------------------------------------------


def contrastive_loss(scores: torch.Tensor, positive_columns: torch.Tensor, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch softmax cross-entropy: each query's positive against every other document of the batch.

    ``scores`` is ``(queries, documents)``; ``excluded`` marks documents that
    must not count as negatives for a query (its other known positives).
    """
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    return F.cross_entropy(scores, positive_columns)


def mse_distillation(student: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student scores and calibrated teacher logits over the valid pairs.

    All three tensors are ``(queries, 1 + negatives)`` with the positive in column 0.
    """
    return ((student - targets)[valid] ** 2).mean()


def margin_mse_distillation(student: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student and teacher margins ``score(q, d+) - score(q, d-)``."""
    student_margins = student[:, :1] - student[:, 1:]
    teacher_margins = targets[:, :1] - targets[:, 1:]
    return ((student_margins - teacher_margins)[valid[:, 1:]] ** 2).mean()


DISTILLATION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse_distillation,
    "margin-mse": margin_mse_distillation,
}


class DSELoss(torch.nn.Module):
    """``(1 - c) * in-batch contrastive loss + c * distillation loss`` on a batch of query groups.

    Inputs:

    +--------------------------+-------------------------------------------------------------+
    | argument                 | shape and meaning                                           |
    +==========================+=============================================================+
    | ``query_embeddings``     | ``(B, dim)``: one row per query                             |
    +--------------------------+-------------------------------------------------------------+
    | ``document_embeddings``  | ``(B * (1 + n), dim)``: query i's positive at row           |
    |                          | ``i * (1 + n)``, its negatives after it; padding rows allowed|
    +--------------------------+-------------------------------------------------------------+
    | ``teacher_logits``       | ``(B, 1 + n)``: the teacher's logit of each own pair, or    |
    |                          | None when ``c == 0``                                        |
    +--------------------------+-------------------------------------------------------------+
    | ``valid``                | ``(B, 1 + n)`` bool: False for padding rows                 |
    +--------------------------+-------------------------------------------------------------+
    | ``excluded``             | ``(B, B * (1 + n))`` bool or None: documents that are not   |
    |                          | negatives for a query (its other known positives)           |
    +--------------------------+-------------------------------------------------------------+

    The student's score is ``scale * cos(q, d)``. The contrastive term is
    sentence-transformers' MultipleNegativesRankingLoss with hard
    negatives: query i's positive against all documents of the batch. The
    distillation term compares query i's own pair scores with
    ``calibration.apply(teacher_logits)`` (see :data:`DISTILLATION_LOSSES`).
    With ``c == 0`` or ``c == 1`` the other term is not computed, so the
    loss is exactly the pure one. The parts are kept in :attr:`last_parts`.

    Example::

        loss = DSELoss(c=0.5, scale=20.0, calibration=Calibration(0.3, 1.2))
        value = loss(q, d, teacher_logits, valid)
    """

    def __init__(self, c: float = 0.5, *, scale: float = 20.0, calibration: Calibration = Calibration(), distillation: str = "mse") -> None:
        super().__init__()
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"c must be in [0, 1], got {c}")
        self.c = c
        self.scale = scale
        self.calibration = calibration
        self.distillation = DISTILLATION_LOSSES[distillation]
        self.last_parts: dict[str, float] = {}

    def forward(
        self,
        query_embeddings: torch.Tensor,
        document_embeddings: torch.Tensor,
        teacher_logits: torch.Tensor | None,
        valid: torch.Tensor,
        excluded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        groups, width = valid.shape
        scores = self.scale * F.normalize(query_embeddings, dim=-1) @ F.normalize(document_embeddings, dim=-1).T
        total = scores.new_zeros(())
        self.last_parts = {}
        if self.c < 1.0:
            # Padding rows never count as negatives: they are excluded for every query.
            padding = ~valid.reshape(1, -1).expand(groups, -1)
            excluded = padding if excluded is None else excluded | padding
            positives = torch.arange(groups, device=scores.device) * width
            contrastive = contrastive_loss(scores, positives, excluded)
            self.last_parts["contrastive"] = float(contrastive.detach())
            total = total + (1.0 - self.c) * contrastive
        if self.c > 0.0:
            if teacher_logits is None:
                raise ValueError("teacher_logits are required when c > 0")
            own = scores.reshape(groups, groups, width)[torch.arange(groups), torch.arange(groups)]
            distillation = self.distillation(own, self.calibration.apply(teacher_logits), valid)
            self.last_parts["distillation"] = float(distillation.detach())
            total = total + self.c * distillation
        return total


# --- teacher scores, computed once and cached ------------------------------------------------------


def model_fingerprint(path: str | Path) -> str:
    """Return the SHA-256 of a model folder's files (relative path and bytes), model cards excluded."""
    root = Path(path)
    if not root.is_dir():
        raise RetkError(f"teacher '{path}' is not a local cross-encoder folder")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in UNSCORED_FILES):
        digest.update(str(file.relative_to(root)).encode("utf-8") + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def examples_fingerprint(examples: Sequence[TrainingExample]) -> str:
    """Return the SHA-256 of the examples' texts: anchor, positive and negatives, in order."""
    payload = json.dumps([[example.anchor, example.positive, *example.negatives] for example in examples], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_teacher(path: str | Path, max_length: int, batch_size: int = 32) -> Any:
    """Load the teacher as a :class:`~retk.retrieval.rerank.CrossEncoderReranker` (raw logits)."""
    from retk.retrieval.rerank import CrossEncoderReranker

    return CrossEncoderReranker(str(path), max_length=max_length, batch_size=batch_size)


@dataclass
class TeacherScores:
    """Teacher logits per example (positive first, then its negatives) and where they came from."""

    scores: list[np.ndarray]
    cache_path: Path
    from_cache: bool
    teacher_sha256: str
    data_sha256: str


def cached_teacher_scores(
    examples: Sequence[TrainingExample],
    teacher: str | Path,
    *,
    max_length: int = 256,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: PairProgress | None = None,
) -> TeacherScores:
    """Return the teacher's logit for every (anchor, positive) and (anchor, negative) pair.

    The scores are stored in ``cache_dir`` (default ``$RETK_CACHE_DIR/dse-teacher-scores``)
    under a key made of the teacher folder's SHA-256, ``max_length`` and the
    SHA-256 of the example texts; a later call with the same teacher and
    data reads them back without loading the teacher.
    """
    teacher_sha = model_fingerprint(teacher)
    data_sha = examples_fingerprint(examples)
    key = hashlib.sha256(f"{teacher_sha}:{max_length}:{data_sha}".encode()).hexdigest()[:32]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / CACHE_FOLDER
    path = folder / f"{key}.json"
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        scores = [np.asarray(row, dtype=np.float32) for row in stored["scores"]]
        if len(scores) == len(examples) and all(len(row) == 1 + len(ex.negatives) for row, ex in zip(scores, examples)):
            logger.info("read teacher scores of %d examples from %s", len(examples), path)
            return TeacherScores(scores, path, True, teacher_sha, data_sha)
        logger.warning("ignoring teacher score cache %s: it does not match the examples", path)
    reranker = load_teacher(teacher, max_length, batch_size)
    pairs = [(example.anchor, document) for example in examples for document in (example.positive, *example.negatives)]
    started = time.perf_counter()
    flat = reranker.score_pairs(pairs, progress)
    seconds = time.perf_counter() - started
    scores, offset = [], 0
    for example in examples:
        width = 1 + len(example.negatives)
        scores.append(flat[offset : offset + width])
        offset += width
    record = {
        "teacher": str(Path(teacher).resolve()),
        "teacher_sha256": teacher_sha,
        "data_sha256": data_sha,
        "max_length": max_length,
        "pairs": len(pairs),
        "seconds": round(seconds, 2),
        "scores": [[float(value) for value in row] for row in scores],
    }
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")
    temporary.replace(path)
    logger.info("scored %d pairs with the teacher in %.1f s; cached in %s", len(pairs), seconds, path)
    return TeacherScores(scores, path, False, teacher_sha, data_sha)


# --- training --------------------------------------------------------------------------------------


def load_student(spec: str, max_seq_length: int, device: str | None = None) -> Any:
    """Load any sentence-transformers bi-encoder folder (``minilm`` is the bundled model) for training."""
    from sentence_transformers import SentenceTransformer

    from retk.embeddings.devices import default_device

    path = resolve_model(spec)
    if not Path(path).is_dir():
        raise RetkError(f"student '{spec}' is not a local sentence-transformers folder (nothing is downloaded)")
    model = SentenceTransformer(path, device=device or default_device(), local_files_only=True)
    model.max_seq_length = max_seq_length
    return model


def student_calibration(
    student: Any, examples: Sequence[TrainingExample], teacher_scores: Sequence[np.ndarray], settings: DSESettings
) -> Calibration:
    """Return the calibration that ``settings.calibration`` names, measured on the untrained student."""
    if settings.c == 0.0 or settings.calibration == "none":
        return Calibration()
    chosen = random.Random(settings.seed).sample(range(len(examples)), min(len(examples), settings.calibration_sample))
    anchors = [examples[i].anchor for i in chosen]
    documents = [examples[i].positive if j == 0 else examples[i].negatives[j - 1] for i in chosen for j in range(1 + len(examples[i].negatives))]
    with torch.no_grad():
        queries = student.encode(anchors, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
        docs = student.encode(documents, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    student_scores, offset = [], 0
    for row, i in enumerate(chosen):
        width = 1 + len(examples[i].negatives)
        student_scores.extend((settings.scale * docs[offset : offset + width] @ queries[row]).cpu().tolist())
        offset += width
    logits = np.concatenate([np.asarray(row, dtype=np.float64) for row in teacher_scores])
    return calibrate_to_student(logits, np.asarray(student_scores))


def fit_dse(
    student: Any,
    examples: Sequence[TrainingExample],
    teacher_scores: Sequence[np.ndarray] | None,
    settings: DSESettings,
    calibration: Calibration,
    *,
    progress: StepProgress | None = None,
) -> dict[str, Any]:
    """Train ``student`` in place with :class:`DSELoss`; return the loss history and seconds."""
    if settings.c > 0.0 and teacher_scores is None:
        raise RetkError("c > 0 needs teacher scores; pass a teacher cross-encoder")
    _seed_everything(settings.seed)
    loss_function = DSELoss(settings.c, scale=settings.scale, calibration=calibration, distillation=settings.distillation)
    positives_of = _positive_texts(examples)
    order = list(range(len(examples)))
    steps_per_epoch = math.ceil(len(order) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    optimizer = torch.optim.AdamW(_parameter_groups(student, settings.weight_decay), lr=settings.learning_rate)
    scheduler = _linear_schedule(optimizer, math.ceil(total_steps * settings.warmup_ratio), total_steps)
    shuffler = random.Random(settings.seed)
    history: dict[str, Any] = {"epochs": [], "steps": 0, "examples": len(examples)}
    started = time.perf_counter()
    student.train()
    for _ in range(settings.epochs):
        shuffler.shuffle(order)
        sums = {"loss": 0.0, "contrastive": 0.0, "distillation": 0.0}
        for start in range(0, len(order), settings.batch_size):
            indices = order[start : start + settings.batch_size]
            batch = [examples[i] for i in indices]
            logits = [teacher_scores[i] for i in indices] if teacher_scores is not None else None
            loss = _student_step(student, batch, logits, settings.negatives, loss_function, positives_of)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            history["steps"] += 1
            sums["loss"] += float(loss.detach())
            for name, value in loss_function.last_parts.items():
                sums[name] += value
            if progress is not None:
                progress(history["steps"], total_steps, float(loss.detach()))
        history["epochs"].append({name: value / steps_per_epoch for name, value in sums.items()})
        logger.info("DSE epoch: %s", history["epochs"][-1])
    student.eval()
    history["seconds"] = round(time.perf_counter() - started, 2)
    return history


def train_dse(
    dataset: BeirDataset | str | Path,
    out: str | Path,
    settings: DSESettings | None = None,
    *,
    teacher: str | Path | None = None,
    negatives_index: Any = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: StepProgress | None = None,
    teacher_progress: PairProgress | None = None,
) -> Path:
    """Train a DSE student on ``dataset``'s qrels with hard negatives and write it to ``out``.

    ``teacher`` (a cross-encoder folder) is needed when ``settings.c > 0``.
    ``out`` is a sentence-transformers folder plus ``retk_training.json``
    with the settings, the calibration, the teacher and data fingerprints
    and the loss history.
    """
    settings = settings or DSESettings()
    if settings.c > 0.0 and teacher is None:
        raise RetkError(f"c = {settings.c} distils a teacher; pass --teacher with a cross-encoder folder, or use c = 0")
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
    examples = [_cap_negatives(example, settings.negatives) for example in examples]
    scored = None
    if settings.c > 0.0:
        scored = cached_teacher_scores(
            examples,
            teacher,
            max_length=settings.teacher_max_length,
            batch_size=settings.teacher_batch_size,
            cache_dir=cache_dir,
            progress=teacher_progress,
        )
    student = load_student(settings.student, settings.max_seq_length)
    calibration = student_calibration(student, examples, scored.scores if scored else [], settings)
    logger.info("calibration: %s", calibration)
    history = fit_dse(student, examples, scored.scores if scored else None, settings, calibration, progress=progress)
    with atomic_directory(out, overwrite=overwrite) as folder:
        student.save(str(folder))
        record = {
            "method": "dse",
            "dataset": dataset.name,
            "settings": asdict(settings),
            "calibration": asdict(calibration),
            "teacher": None
            if scored is None
            else {"path": str(Path(teacher).resolve()), "sha256": scored.teacher_sha256, "scores_cache": str(scored.cache_path), "from_cache": scored.from_cache},
            "data_sha256": scored.data_sha256 if scored else examples_fingerprint(examples),
            "history": history,
        }
        (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote DSE student to %s", out)
    return Path(out)


def _student_step(
    student: Any,
    batch: Sequence[TrainingExample],
    teacher_logits: Sequence[np.ndarray] | None,
    negatives: int,
    loss_function: DSELoss,
    positives_of: dict[str, set[str]],
) -> torch.Tensor:
    width = 1 + negatives
    documents: list[str] = []
    valid = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, example in enumerate(batch):
        own = [example.positive, *example.negatives[:negatives]]
        valid[row, : len(own)] = True
        # Short groups are padded with the positive; the padding rows are masked out of both terms.
        documents.extend(own + [example.positive] * (width - len(own)))
    device = student.device
    queries = student(_to_device(student.preprocess([example.anchor for example in batch]), device))["sentence_embedding"]
    docs = student(_to_device(student.preprocess(documents), device))["sentence_embedding"]
    excluded = torch.tensor(
        [[column != row * width and documents[column] in positives_of[example.anchor] for column in range(len(documents))] for row, example in enumerate(batch)],
        dtype=torch.bool,
    )
    targets = None
    if teacher_logits is not None:
        targets = torch.zeros(len(batch), width)
        for row, logits in enumerate(teacher_logits):
            targets[row, : min(width, len(logits))] = torch.as_tensor(logits[:width])
        targets = targets.to(device)
    return loss_function(queries, docs, targets, valid.to(device), excluded.to(device))


def _positive_texts(examples: Sequence[TrainingExample]) -> dict[str, set[str]]:
    positives: dict[str, set[str]] = {}
    for example in examples:
        positives.setdefault(example.anchor, set()).add(example.positive)
    return positives


def _cap_negatives(example: TrainingExample, count: int) -> TrainingExample:
    from dataclasses import replace

    return example if len(example.negatives) <= count else replace(example, negatives=example.negatives[:count])
