"""``retk train llm``: LoRA contrastive fine-tuning of a decoder-only LLM encoder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from retk.cli.app import console
from retk.cli.train import train_app
from retk.datasets import BeirDataset
from retk.embeddings.instructions import instruction_for
from retk.embeddings.registry import ENCODER_ALIASES
from retk.retrieval import Index, build_index
from retk.training.data import mine_hard_negatives, pairs_from_qrels, read_pairs_file
from retk.training.llm import LLMTrainingConfig, train_llm


@train_app.command("llm")
def train_llm_command(
    dataset: Optional[Path] = typer.Argument(None, help="BEIR folder whose --split qrels give (query, relevant document) pairs."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the adapter (or merged model) into."),
    pairs: list[Path] = typer.Option([], "--pairs", help="JSONL or Parquet file of anchor, positive, negatives. Repeatable."),
    split: str = typer.Option("train", help="Qrels split of DATASET to train on."),
    base: str = typer.Option("smollm2", help="Backbone: 'smollm2' (bundled SmolLM2-135M-Instruct GGUF), a causal-LM folder or a .gguf file."),
    pooling: str = typer.Option("last", help="'last' (hidden state of the appended EOS) or 'mean'."),
    instruction: str = typer.Option("auto", help="Query task instruction: 'auto' (by DATASET's folder name), 'none', or the text."),
    max_length: int = typer.Option(256, help="Tokens per query or document, EOS included."),
    batch_size: int = typer.Option(8, help="Queries per step; each brings its positive and hard negatives."),
    epochs: int = typer.Option(1, help="Passes over the training pairs."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    learning_rate: float = typer.Option(1e-4, help="AdamW learning rate for the LoRA weights."),
    temperature: float = typer.Option(0.02, help="Softmax temperature of the contrastive loss."),
    lora_rank: int = typer.Option(8, help="LoRA rank r."),
    lora_alpha: int = typer.Option(16, help="LoRA scaling alpha."),
    layers: Optional[int] = typer.Option(None, help="Put LoRA on the last N layers only (faster on CPU); default every layer."),
    hard_negatives: int = typer.Option(1, help="Hard negatives per query, mined from the top 30 hits of --negatives-index (0: in-batch only)."),
    negatives_index: Optional[Path] = typer.Option(None, help="Index to mine hard negatives from; default a BM25 index of DATASET built on the fly."),
    gradient_checkpointing: bool = typer.Option(True, help="Recompute activations in the backward pass to save memory."),
    merge: bool = typer.Option(False, help="Save the merged model instead of the LoRA adapter."),
    seed: int = typer.Option(0, help="Seed for shuffling and LoRA initialisation."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Fine-tune a decoder-only LLM encoder with LoRA and in-batch plus hard negatives."""
    if dataset is None and not pairs:
        raise typer.BadParameter("give a BEIR DATASET folder, --pairs files, or both")
    examples = []
    beir = BeirDataset.open(dataset) if dataset is not None else None
    if beir is not None:
        examples += pairs_from_qrels(beir, split)
    for path in pairs:
        examples += read_pairs_file(path)
    if hard_negatives > 0:
        examples = _mine(examples, beir, negatives_index, hard_negatives)

    resolved_instruction = None
    if instruction == "auto":
        resolved_instruction = instruction_for(beir.name) if beir is not None else None
    elif instruction != "none":
        resolved_instruction = instruction
    alias = ENCODER_ALIASES.get(base, {})
    config = LLMTrainingConfig(
        base_model=alias.get("model", base) if alias.get("type") == "llm" else base,
        pooling=pooling,
        instruction=resolved_instruction,
        max_length=max_length,
        batch_size=batch_size,
        epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        temperature=temperature,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        layers=layers,
        hard_negatives=hard_negatives,
        gradient_checkpointing=gradient_checkpointing,
        merge=merge,
        seed=seed,
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:
        task = progress.add_task("training", total=None, loss="")
        result = train_llm(
            examples,
            out,
            config,
            overwrite=overwrite,
            on_step=lambda step, total, loss: progress.update(task, completed=step, total=total, loss=f"loss {loss:.4f}"),
        )
    first, last = result.losses[0], result.losses[-1]
    saved = "merged model" if merge else "LoRA adapter"
    console.print(f"trained {result.steps} steps in {result.seconds:.0f} s (loss {first:.4f} → {last:.4f}); {saved} in {out}")
    console.print(f"index with: retk index CORPUS --out INDEX --encoder {out}")


def _mine(examples, beir: BeirDataset | None, negatives_index: Path | None, count: int):
    if negatives_index is not None:
        return mine_hard_negatives(examples, Index.open(negatives_index), count=count)
    if beir is None:
        raise typer.BadParameter("--hard-negatives without a DATASET needs --negatives-index")
    with tempfile.TemporaryDirectory(prefix="retk-negatives-") as folder:
        console.print(f"mining {count} hard negatives per query with BM25 over {beir.name}")
        index = build_index(beir.root, Path(folder) / "bm25", "bm25")
        return mine_hard_negatives(examples, index, count=count)
