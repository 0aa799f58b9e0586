"""A BERT-family bi-encoder whose chosen layers hold one feed-forward expert per domain.

The method follows "Contrastive Learning and Mixture of Experts Enables
Precise Vector Embeddings" (Gleghorn lab, 2024): the feed-forward blocks of
some or all layers are copied into N experts, one per domain, and every input
of domain i goes through expert i ("enforced routing"). Attention, embeddings
and LayerNorms stay shared. A learned router picks the expert when the
domain is unknown.

The saved folder contains ``moe_config.json`` (domains, expert layers, pooling,
sequence length), the transformer's ``config.json``, the tokenizer files and
``moe.safetensors`` with every weight, experts and router included. Nothing
is pickled, and a plain ``SentenceTransformer(folder)`` fails instead of
silently loading a model without its experts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from retk.errors import RetkError
from retk.training.moe.layers import ROUTER_MODE, ExpertFeedForward, Routing

logger = logging.getLogger(__name__)

CONFIG_NAME = "moe_config.json"
WEIGHTS_NAME = "moe.safetensors"
FORMAT = "retk-moe"
FORMAT_VERSION = 1
POOLING_MODES = ("mean", "cls")


class MoEModel(nn.Module):
    """A transformer with expert layers, its tokenizer, pooling and routing.

    ``model(features)`` returns ``{"sentence_embedding": ...}`` like a
    SentenceTransformer, so sentence-transformers losses train it directly.
    Use :meth:`route` to enforce a domain's expert; outside it the router
    chooses. :meth:`encode` accepts one domain or one per text.

    Example::

        moe = MoEModel.from_sentence_transformer(model, ["biomedical", "encyclopedic"])
        with moe.route("biomedical"):
            loss = loss_function(features, None)
        moe.save("models/moe")
        vectors = MoEModel.load("models/moe").encode(["aspirin"], domain="biomedical")
    """

    def __init__(
        self,
        transformer: nn.Module,
        tokenizer: Any,
        *,
        domains: Sequence[str],
        expert_layers: Sequence[int],
        pooling: str = "mean",
        normalize: bool = True,
        max_seq_length: int = 256,
        base_model: str = "",
        routing: Routing | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING_MODES:
            raise RetkError(f"unsupported pooling '{pooling}'; expected one of {', '.join(POOLING_MODES)}")
        if len(set(domains)) != len(domains) or len(domains) < 1:
            raise RetkError(f"domains must be distinct and at least one, got {list(domains)}")
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.domains = list(domains)
        self.expert_layers = list(expert_layers)
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.base_model = base_model
        self.__dict__["routing"] = routing or Routing()
        transformer.register_forward_pre_hook(self._capture_mask, with_kwargs=True)

    @classmethod
    def from_sentence_transformer(
        cls, model: Any, domains: Sequence[str], expert_layers: str | int | Sequence[int] = "all", *, base_model: str = ""
    ) -> "MoEModel":
        """Convert a SentenceTransformer (Transformer, Pooling, optional Normalize) in place.

        ``expert_layers`` is ``"all"``, a count ``k`` (the last k layers) or
        a list of layer indices. Before training every expert equals the
        original block, so the model computes the base model's embeddings.
        """
        modules = list(model)
        names = [type(module).__name__ for module in modules]
        if names[:2] != ["Transformer", "Pooling"] or any(name != "Normalize" for name in names[2:]):
            raise RetkError(f"MoE conversion supports Transformer + Pooling (+ Normalize) models, found {' + '.join(names)}")
        pooling = modules[1].get_config_dict().get("pooling_mode", "mean")
        transformer = modules[0].auto_model
        layers = encoder_layers(transformer)
        chosen = resolve_expert_layers(expert_layers, len(layers))
        routing = Routing()
        convert_layers(transformer, chosen, len(domains), routing)
        return cls(
            transformer,
            modules[0].tokenizer,
            domains=domains,
            expert_layers=chosen,
            pooling=pooling,
            normalize="Normalize" in names,
            max_seq_length=model.max_seq_length,
            base_model=base_model,
            routing=routing,
        )

    def __getitem__(self, position: int) -> nn.Module:
        """Return the input module for ``position`` 0, as indexing a SentenceTransformer does.

        sentence-transformers' cached losses inspect ``model[0]`` to reject inputs that cannot be split into mini-batches.
        """
        if position != 0:
            raise IndexError(f"an MoE model exposes only its input module, at position 0, not {position}")
        return self.transformer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dimension(self) -> int:
        return int(self.transformer.config.hidden_size)

    def expert_index(self, domain: str) -> int:
        try:
            return self.domains.index(domain)
        except ValueError:
            raise RetkError(f"unknown domain '{domain}'; this model's domains are: {', '.join(self.domains)}") from None

    @contextmanager
    def route(self, domain: str | None) -> Iterator[None]:
        """Enforce ``domain``'s expert inside the block; ``None`` leaves the choice to the router."""
        previous = self.routing.expert
        self.routing.expert = ROUTER_MODE if domain is None else self.expert_index(domain)
        try:
            yield
        finally:
            self.routing.expert = previous

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return dict(
            self.tokenizer(
                texts, padding=True, truncation="longest_first", return_tensors="pt", max_length=self.max_seq_length
            )
        )

    def forward(self, features: dict[str, Any]) -> dict[str, Tensor]:
        inputs = {key: features[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in features}
        tokens = self.transformer(**inputs, return_dict=True).last_hidden_state
        embedding = self._pool(tokens, features["attention_mask"])
        if self.normalize:
            embedding = nn.functional.normalize(embedding, p=2, dim=1)
        return {"token_embeddings": tokens, "sentence_embedding": embedding}

    def encode(
        self, texts: Sequence[str], *, domain: str | None | Sequence[str | None] = None, batch_size: int = 32
    ) -> np.ndarray:
        """Embed ``texts`` without gradients, routing by ``domain`` (one for all texts or one per text)."""
        domains = [domain] * len(texts) if domain is None or isinstance(domain, str) else list(domain)
        if len(domains) != len(texts):
            raise ValueError(f"got {len(domains)} domains for {len(texts)} texts")
        output = np.zeros((len(texts), self.dimension), dtype=np.float32)
        groups: dict[str | None, list[int]] = {}
        for position, name in enumerate(domains):
            groups.setdefault(name, []).append(position)
        was_training = self.training
        self.eval()
        with torch.inference_mode():
            for name, positions in groups.items():
                with self.route(name):
                    for start in range(0, len(positions), batch_size):
                        rows = positions[start:start + batch_size]
                        features = {key: value.to(self.device) for key, value in self.tokenize([texts[i] for i in rows]).items()}
                        output[rows] = self(features)["sentence_embedding"].float().cpu().numpy()
        self.train(was_training)
        return output

    def save(self, folder: str | Path) -> None:
        """Write the config, tokenizer and all weights (safetensors) to ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.transformer.config.to_json_file(str(folder / "config.json"))
        self.tokenizer.save_pretrained(str(folder))
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.transformer.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "base_model": self.base_model,
            "domains": self.domains,
            "expert_layers": self.expert_layers,
            "layer_count": len(encoder_layers(self.transformer)),
            "router_layer": self.expert_layers[0],
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_seq_length": self.max_seq_length,
        }
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path, *, device: str | None = None) -> "MoEModel":
        """Rebuild a saved model: transformer from ``config.json``, experts, then every weight from safetensors."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        folder = Path(folder)
        config = read_moe_config(folder)
        transformer = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        routing = Routing()
        convert_layers(transformer, config["expert_layers"], len(config["domains"]), routing)
        state = load_file(str(folder / WEIGHTS_NAME))
        missing, unexpected = transformer.load_state_dict(state, strict=False)
        # Non-persistent buffers (position ids) are rebuilt by the constructor and may be absent from the file.
        missing = [name for name in missing if not name.endswith("position_ids")]
        if missing or unexpected:
            raise RetkError(f"{folder / WEIGHTS_NAME} does not match {CONFIG_NAME}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = cls(
            transformer,
            tokenizer,
            domains=config["domains"],
            expert_layers=config["expert_layers"],
            pooling=config["pooling"],
            normalize=config["normalize"],
            max_seq_length=config["max_seq_length"],
            base_model=config.get("base_model", ""),
            routing=routing,
        )
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        self.routing.start_forward(kwargs.get("attention_mask"))

    def _pool(self, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        if self.pooling == "cls":
            return tokens[:, 0]
        # The same arithmetic as sentence-transformers' mean Pooling, so converted embeddings match exactly.
        mask = attention_mask.unsqueeze(-1).expand(tokens.size()).to(tokens.dtype)
        return torch.sum(tokens * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)


def encoder_layers(transformer: nn.Module) -> nn.ModuleList:
    """Return the transformer's layer list (``encoder.layer`` in BERT, RoBERTa, MPNet, ELECTRA)."""
    layers = getattr(getattr(transformer, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or not all(
        hasattr(layer, "intermediate") and hasattr(getattr(layer, "output", None), "dense") for layer in layers
    ):
        raise RetkError(
            f"{type(transformer).__name__} is not a BERT-family encoder: expected encoder.layer[i] with "
            "intermediate.dense and output.dense"
        )
    return layers


def resolve_expert_layers(spec: str | int | Sequence[int], layer_count: int) -> list[int]:
    """Turn ``"all"``, a count of last layers, or explicit indices into sorted layer indices."""
    if spec == "all":
        return list(range(layer_count))
    if isinstance(spec, str):
        spec = [int(part) for part in spec.split(",")] if "," in spec else int(spec)
    if isinstance(spec, int):
        if not 1 <= spec <= layer_count:
            raise RetkError(f"expert layer count must be between 1 and {layer_count}, got {spec}")
        return list(range(layer_count - spec, layer_count))
    chosen = sorted(set(int(index) for index in spec))
    if not chosen or chosen[0] < 0 or chosen[-1] >= layer_count:
        raise RetkError(f"expert layers must be indices in 0..{layer_count - 1}, got {list(spec)}")
    return chosen


def convert_layers(transformer: nn.Module, layer_indices: Sequence[int], expert_count: int, routing: Routing) -> None:
    """Replace the chosen layers' feed-forward blocks with ``expert_count`` copies each."""
    layers = encoder_layers(transformer)
    for position, index in enumerate(layer_indices):
        layer = layers[index]
        layer.intermediate = ExpertFeedForward.from_layer(layer, expert_count, routing, with_router=position == 0)
        # The experts already apply the down-projection; dropout, residual and LayerNorm stay in layer.output.
        layer.output.dense = nn.Identity()


def read_moe_config(folder: Path) -> dict[str, Any]:
    """Read and check ``moe_config.json`` of a saved MoE model folder."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise RetkError(f"{folder} is not an MoE model folder: {CONFIG_NAME} not found")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise RetkError(f"{path}: unsupported format {config.get('format')} version {config.get('format_version')}")
    return config


def is_moe_folder(path: str | Path) -> bool:
    """Return whether ``path`` is a folder saved by :meth:`MoEModel.save`."""
    return (Path(path) / CONFIG_NAME).is_file()
