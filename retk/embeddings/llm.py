"""Decoder-only language models as dense encoders: EOS appended, last-token or mean pooling.

This is the RepLLaMA / E5-Mistral recipe: each text is formatted with a
template (``"query: {text}"``, ``"passage: {text}"``, or an instruction
template for queries), tokenized, truncated to ``max_length - 1`` tokens and
closed with the end-of-sequence token. A causal model's last position is the
only one that has attended to the whole text, so its hidden state is the
embedding ("last" pooling). "Mean" pooling averages every attended position.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retk.embeddings.base import DenseEncoder
from retk.embeddings.devices import default_device
from retk.embeddings.gguf import BUNDLED_SMOLLM2, resolve_backbone
from retk.embeddings.registry import ENCODER_ALIASES, register_encoder, register_path_detector
from retk.errors import RetkError

logger = logging.getLogger(__name__)

DEFAULT_QUERY_TEMPLATE = "query: {text}"
DEFAULT_DOCUMENT_TEMPLATE = "passage: {text}"
INSTRUCTION_QUERY_TEMPLATE = "Instruct: {instruction}\nQuery: {text}"
DEFAULT_MAX_LENGTH = 512
DEFAULT_MAX_BATCH_TOKENS = 16384
# Written by `retk train llm` into adapter and merged-model folders: the encoder
# settings the model was trained with, so loading the folder restores them.
ENCODER_SETTINGS_NAME = "retk-encoder.json"
PADDING_SIDES = ("left", "right")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the hidden state of each row's last attended position.

    The position is found from the mask itself (the last 1 in the row), so the
    result is the same under left padding, right padding or no padding.
    """
    width = attention_mask.shape[1]
    last = width - 1 - attention_mask.flip(1).to(torch.int64).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Return the average hidden state over each row's attended positions."""
    mask = attention_mask.unsqueeze(-1).bool()
    # masked_fill, not multiplication: a padded position's state may be NaN
    # when its attention row is fully masked, and NaN * 0 is NaN.
    summed = hidden.masked_fill(~mask, 0.0).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1).to(hidden.dtype)
    return summed / counts


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"last": last_token_pool, "mean": mean_pool}


def batches_by_token_budget(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group text positions, longest first, so each padded batch has at most ``max_batch_tokens`` tokens.

    A text longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda position: -lengths[position])
    batches: list[list[int]] = []
    current: list[int] = []
    for position in order:
        # The first text of a batch is its longest, so it sets the padded width.
        if current and (len(current) + 1) * lengths[current[0]] > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(position)
    if current:
        batches.append(current)
    return batches


@register_encoder
class LLMEncoder(DenseEncoder):
    """Any decoder-only model that transformers loads from a local folder, a GGUF file, or a LoRA adapter.

    ``model`` is a local transformers folder, a ``.gguf`` file, or the bundled
    ``bundled:SmolLM2-135M-Instruct`` (GGUF files are converted once into
    retk's cache, see :mod:`retk.embeddings.gguf`). ``adapter`` is a PEFT LoRA
    adapter folder trained on ``model``; it is merged into the weights at load.

    Queries are formatted with ``query_template`` and documents with
    ``document_template``; ``{text}`` is the text and ``{instruction}`` the
    task instruction. Without an explicit query template, queries get
    ``"Instruct: {instruction}\\nQuery: {text}"`` when an instruction is set
    and ``"query: {text}"`` otherwise. ``max_length`` counts every token,
    the appended EOS included. Batches are formed longest text first, up to
    ``max_batch_tokens`` padded tokens each. ``dtype="auto"`` is bfloat16 on a
    GPU that supports it (else float16) and float32 on CPU.

    Example::

        encoder = LLMEncoder(instruction=instruction_for("scifact"), max_length=256)
        vectors = encoder.encode_documents(["BM25 is a ranking function."])
    """

    type_name = "llm"

    def __init__(
        self,
        model: str = BUNDLED_SMOLLM2,
        *,
        adapter: str | None = None,
        pooling: str = "last",
        normalize: bool = True,
        instruction: str | None = None,
        query_template: str | None = None,
        document_template: str = DEFAULT_DOCUMENT_TEMPLATE,
        max_length: int = DEFAULT_MAX_LENGTH,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        padding_side: str = "right",
        dtype: str = "auto",
        device: str | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise RetkError(f"unknown pooling '{pooling}'; expected one of {', '.join(POOLINGS)}")
        if padding_side not in PADDING_SIDES:
            raise RetkError(f"unknown padding side '{padding_side}'; expected left or right")
        if dtype != "auto" and dtype not in DTYPES:
            raise RetkError(f"unknown dtype '{dtype}'; expected auto or one of {', '.join(DTYPES)}")
        if max_length < 2:
            raise RetkError(f"max_length must be at least 2 (one text token and EOS), got {max_length}")
        self.model_name = model
        self.adapter = adapter
        self.pooling = pooling
        self.normalize = normalize
        self.instruction = instruction or None
        self.query_template = query_template or (INSTRUCTION_QUERY_TEMPLATE if self.instruction else DEFAULT_QUERY_TEMPLATE)
        self.document_template = document_template
        _check_template(self.query_template, "query_template", self.instruction)
        _check_template(self.document_template, "document_template", self.instruction)
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.padding_side = padding_side
        self.dtype = dtype
        self.device = device or default_device()
        self.tokenizer, self.model = self._load()
        self.eos_token_id = self._eos_token_id()
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = self.eos_token_id if pad is None else pad
        logger.info("loaded %s on %s as %s (dimension %d)", self.name, self.device, self.torch_dtype, self.dimension)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype the weights are loaded in: ``dtype``, or for ``auto`` the device's best."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    @property
    def name(self) -> str:
        base = Path(self.model_name.removeprefix("bundled:")).name
        return f"{base}+{Path(self.adapter).name}" if self.adapter else base

    @property
    def dimension(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def similarity(self) -> str:
        return "cosine" if self.normalize else "dot"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "adapter": self.adapter,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "instruction": self.instruction,
            "query_template": self.query_template,
            "document_template": self.document_template,
            "max_length": self.max_length,
            "max_batch_tokens": self.max_batch_tokens,
            "padding_side": self.padding_side,
            "dtype": self.dtype,
        }

    def settings(self) -> dict[str, Any]:
        """Return the config without type, model and adapter, as a trained folder stores it."""
        return {key: value for key, value in self.config().items() if key not in ("type", "model", "adapter")}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "LLMEncoder":
        names = (
            "model", "adapter", "pooling", "normalize", "instruction", "query_template", "document_template",
            "max_length", "max_batch_tokens", "padding_side", "dtype", "device",
        )
        return cls(**{key: config[key] for key in names if key in config})

    def format_queries(self, texts: Sequence[str]) -> list[str]:
        return [self.query_template.format(text=text, instruction=self.instruction or "") for text in texts]

    def format_documents(self, texts: Sequence[str]) -> list[str]:
        return [self.document_template.format(text=text, instruction=self.instruction or "") for text in texts]

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(self.format_queries(texts))

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(self.format_documents(texts))

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Tokenize formatted texts, truncated to ``max_length - 1`` tokens, each ending with EOS."""
        encoded = self.tokenizer(
            list(texts), add_special_tokens=True, truncation=True, max_length=self.max_length - 1, padding=False
        )["input_ids"]
        # A tokenizer that already closes every text with EOS gets no second one.
        return [ids if ids and ids[-1] == self.eos_token_id else [*ids, self.eos_token_id] for ids in encoded]

    def pad(self, sequences: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pad token id lists on ``padding_side``; return input ids, attention mask and position ids on the device."""
        width = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
        # Positions count attended tokens only, so a left-padded text gets the
        # same positions as when it is alone. Models with absolute position
        # embeddings need this, and rotary ones are unaffected.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        return {key: value.to(self.device) for key, value in batch.items()}

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the model on a padded batch and return pooled (and, if set, L2-normalised) float32 vectors.

        Gradients flow when called outside ``torch.no_grad``, which is how the
        LoRA trainer uses it.
        """
        hidden = self.model(**batch, use_cache=False).last_hidden_state
        return self._finish(POOLINGS[self.pooling](hidden, batch["attention_mask"]))

    def encode_with_poolings(self, texts: Sequence[str], poolings: Sequence[str]) -> dict[str, np.ndarray]:
        """Encode formatted texts once and pool the hidden states several ways, e.g. ``("last", "mean")``.

        Comparing poolings this way costs one forward pass instead of one per pooling.
        """
        unknown = [name for name in poolings if name not in POOLINGS]
        if unknown:
            raise RetkError(f"unknown pooling '{unknown[0]}'; expected one of {', '.join(POOLINGS)}")
        vectors = {name: np.empty((len(texts), self.dimension), dtype=np.float32) for name in poolings}
        if not texts:
            return vectors
        sequences = self.token_ids(texts)
        self.model.eval()
        with torch.inference_mode():
            for positions in batches_by_token_budget([len(ids) for ids in sequences], self.max_batch_tokens):
                batch = self.pad([sequences[position] for position in positions])
                hidden = self.model(**batch, use_cache=False).last_hidden_state
                for name in poolings:
                    vectors[name][positions] = self._finish(POOLINGS[name](hidden, batch["attention_mask"])).cpu().numpy()
        return vectors

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        pooled = pooled.float()
        return torch.nn.functional.normalize(pooled, p=2, dim=-1) if self.normalize else pooled

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_with_poolings(texts, (self.pooling,))[self.pooling]

    def _load(self) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoModel, AutoTokenizer

        folder = resolve_backbone(self.model_name)
        if not Path(folder).is_dir():
            raise RetkError(f"model folder {folder} not found; pass a local transformers folder, a .gguf file or {BUNDLED_SMOLLM2}")
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, dtype=self.torch_dtype, local_files_only=True)
        if self.adapter is not None:
            model = _merge_adapter(model, self.adapter)
        return tokenizer, model.to(self.device)

    def _eos_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = self.model.config.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        if eos is None:
            raise RetkError(f"{self.model_name} defines no EOS token in its tokenizer or config; last-token pooling needs one")
        return int(eos)


def _check_template(template: str, name: str, instruction: str | None) -> None:
    if "{text}" not in template:
        raise RetkError(f"{name} '{template}' has no {{text}} placeholder")
    if "{instruction}" in template and not instruction:
        raise RetkError(f"{name} '{template}' uses {{instruction}} but no instruction is set")
    try:
        template.format(text="", instruction="")
    except (KeyError, IndexError, ValueError) as error:
        raise RetkError(f"{name} '{template}' is not a valid template ({error}); only {{text}} and {{instruction}} are filled") from None


def _merge_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise RetkError(f"{adapter} is not a LoRA adapter folder: adapter_config.json not found")
    try:
        from peft import PeftModel
    except ImportError:
        raise RetkError("loading a LoRA adapter needs the 'peft' package; install retk[llm]") from None
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def llm_config_for_path(path: Path) -> dict[str, Any] | None:
    """Return an LLM encoder config for a trained folder, a LoRA adapter folder, a causal-LM folder or a GGUF file.

    Returns None for anything else (e.g. a sentence-transformers folder), so
    :func:`retk.embeddings.load_encoder` falls back to other encoder types.
    """
    if path.is_file():
        return {"type": LLMEncoder.type_name, "model": str(path)} if path.suffix.lower() == ".gguf" else None
    settings_path = path / ENCODER_SETTINGS_NAME
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text(encoding="utf-8"))
        if saved.get("adapter_of") is not None:
            return {**saved["settings"], "type": LLMEncoder.type_name, "model": saved["adapter_of"], "adapter": str(path)}
        return {**saved["settings"], "type": LLMEncoder.type_name, "model": str(path)}
    if (path / "adapter_config.json").is_file():
        adapter_config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        return {"type": LLMEncoder.type_name, "model": adapter_config["base_model_name_or_path"], "adapter": str(path)}
    if (path / "modules.json").is_file() or not (path / "config.json").is_file():
        return None
    model_config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if any(name.endswith("ForCausalLM") for name in model_config.get("architectures") or []):
        return {"type": LLMEncoder.type_name, "model": str(path)}
    return None


ENCODER_ALIASES["smollm2"] = {"type": LLMEncoder.type_name, "model": BUNDLED_SMOLLM2}
register_path_detector(llm_config_for_path)
