"""The ``retk index``, ``search``, ``eval`` and ``info`` commands: thin wrappers over the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from retk.cli.app import app, console
from retk.embeddings import Encoder, load_encoder
from retk.errors import RetkError
from retk.evaluation import evaluate
from retk.retrieval import Index, build_index
from retk.retrieval.index import check_strategy
from retk.retrieval.rerank import DEFAULT_RERANK_DEPTH, load_reranker, search_and_rerank


INDEX_ENGINES = ("local", "ray")


@app.command("index")
def index_command(
    corpus: Path = typer.Argument(..., help="BEIR dataset folder, or a corpus file (.jsonl, .csv, .tsv, .parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create."),
    encoder: str = typer.Option("minilm", help="'minilm' (bundled all-MiniLM-L6-v2), 'bm25', 'smollm2' (bundled SmolLM2-135M LLM encoder), a local sentence-transformers or causal-LM folder, a LoRA adapter from 'retk train llm', or a .gguf file."),
    instruction: Optional[str] = typer.Option(None, "--instruction", help="Query task instruction for LLM encoders, saved in the manifest: the text, or 'auto' to pick it by the corpus folder's name (scifact, nfcorpus...)."),
    index_spec: str = typer.Option("auto", "--index-spec", help="FAISS factory string (Flat, HNSW32,Flat, IVF1024,Flat...); 'auto' is Flat up to 200,000 documents, HNSW above."),
    id_field: Optional[str] = typer.Option(None, help="Id column or key of a corpus file (default: _id, else id)."),
    title_field: str = typer.Option("title", help="Title column or key of a corpus file."),
    text_field: str = typer.Option("text", help="Text column or key of a corpus file."),
    batch_documents: int = typer.Option(1024, help="Documents read and encoded per batch."),
    overwrite: bool = typer.Option(False, help="Replace an existing index folder once the new one is complete."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Domain whose expert encodes the corpus and, by default, the queries (MoE encoders only)."),
    engine: str = typer.Option("local", "--engine", help="'local' builds in this process; 'ray' encodes shards on a Ray cluster (needs the 'distributed' extra of retk)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address, e.g. ray://head:10001 or auto; default: start a local Ray instance on 127.0.0.1."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Encoder actors with --engine ray (default: one per GPU, or per CPU without GPUs)."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="GPUs each encoder actor reserves with --engine ray (default: 1 when the cluster has GPUs, else 0)."),
    calibration_queries: Optional[Path] = typer.Option(None, "--calibration-queries", help="BEIR queries.jsonl with a sample of the queries this index will serve; the filtered-search planner tunes its knobs on them instead of on noisy documents."),
) -> None:
    """Build an index folder from a corpus."""
    if engine not in INDEX_ENGINES:
        raise typer.BadParameter(f"unknown engine '{engine}'; expected one of {', '.join(INDEX_ENGINES)}", param_hint="--engine")
    if calibration_queries is not None and engine == "ray":
        # NOTE: a Ray build calibrates on noisy documents; passing a query sample to it is not built yet.
        raise typer.BadParameter("is not supported with --engine ray yet", param_hint="--calibration-queries")
    if domain is not None:
        encoder = _route_by_domain(load_encoder(encoder), domain)
    if instruction is not None:
        encoder = _with_instruction(encoder, instruction, corpus)
    options = {}
    if corpus.is_file():
        options = {"id_field": id_field, "title_field": title_field, "text_field": text_field}
    with _progress() as progress:
        task = progress.add_task(f"indexing {corpus.name}", total=None)
        build_function, engine_options = build_index, {"batch_documents": batch_documents, "calibration_queries": calibration_queries}
        if engine == "ray":
            from retk.distributed import build_index_ray  # Ray is imported only for this engine.

            build_function, engine_options = build_index_ray, {"ray_address": ray_address, "workers": workers, "gpus_per_worker": gpus_per_worker}
        index = build_function(
            corpus,
            out,
            encoder,
            index_spec=index_spec,
            overwrite=overwrite,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            **engine_options,
            **options,
        )
    build = index.manifest["build"]
    console.print(
        f"indexed {len(index)} documents into {out} with {index.encoder.name} "
        f"in {build['seconds']:.1f} s ({build['documents_per_second']} docs/s encoding)"
    )
    skipped = index.manifest["skipped_documents"]
    for reason, entry in skipped.items():
        console.print(f"skipped {entry['count']} documents ({reason}); their ids are in {out}/manifest.json")


@app.command("search")
def search_command(
    index_path: Path = typer.Argument(..., metavar="INDEX", help="Index folder built by 'retk index'."),
    query: str = typer.Argument(..., help="Query text."),
    k: int = typer.Option(10, "-k", help="Number of documents to return."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON on stdout."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder folder that reranks the first stage's top documents."),
    rerank_depth: int = typer.Option(DEFAULT_RERANK_DEPTH, "--rerank-depth", help="First-stage documents the cross-encoder rescores."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Domain whose expert encodes the query, overriding the index's (MoE encoders only)."),
    filter_text: Optional[str] = typer.Option(None, "--filter", help="Attribute filter, e.g. \"domain = 'scifact' and year >= 2020\" (operators: = != < <= > >= in, not in, between, contains, is null, and, or, not)."),
    strategy: str = typer.Option("auto", "--strategy", help="Filtered-search strategy: auto (the planner chooses), exact, hnsw, ivf, hnswlib or postfilter."),
    explain: bool = typer.Option(False, "--explain", help="Print the filter's selectivity, the chosen strategy and why."),
) -> None:
    """Search an index and print the top-k documents."""
    check_strategy(strategy)
    index = Index.open(index_path)
    if domain is not None:
        _route_by_domain(index.encoder, domain)
    reranker = load_reranker(rerank) if rerank is not None else None
    if reranker is None:
        result = index.search(query, k=k, filter=filter_text, strategy=strategy)
    else:
        result = search_and_rerank(index, [query], reranker, k=k, depth=rerank_depth, filter=filter_text, strategy=strategy)[0]
    if explain:
        explanation = result.explanation or f"no filter and no strategy: plain search over all {len(index):,} documents"
        console.print(explanation, markup=False, highlight=False)
    if as_json:
        hits = [
            {"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "title": h.title, "text": h.text, "attributes": h.attributes}
            for h in result.hits
        ]
        extra = {"filter": result.filter, "matched": result.matched} if result.filter is not None else {}
        if explain and result.plan is not None:
            extra["explain"] = result.explanation
        # default=str writes date and timestamp attributes as ISO strings.
        print(json.dumps({"query": query, "k": k, "hits": hits, "note": result.note, **extra}, ensure_ascii=False, indent=2, default=str))
        return
    table = Table("rank", "doc id", "score", "title / text")
    for hit in result.hits:
        table.add_row(str(hit.rank), hit.doc_id, f"{hit.score:.4f}", _snippet(hit.title or hit.text))
    console.print(table)
    if result.note:
        console.print(result.note)


@app.command("eval")
def eval_command(
    dataset: Optional[Path] = typer.Option(None, help="Dataset folder: BEIR (corpus.jsonl, queries.jsonl, qrels/) or Multi-CPR."),
    index_path: Optional[Path] = typer.Option(None, "--index", help="Index folder built from that dataset's corpus."),
    config: Optional[Path] = typer.Option(None, "--config", help="Matrix config (YAML): evaluate every retriever on every dataset it lists, resuming finished cells."),
    split: str = typer.Option("test", help="Qrels split: qrels/<split>.tsv."),
    output: Optional[Path] = typer.Option(None, help="Results JSON to write (with --config: the results folder)."),
    run: Optional[Path] = typer.Option(None, help="TREC run file to write."),
    depth: int = typer.Option(1000, help="Documents retrieved per query."),
    keep_identical_ids: bool = typer.Option(False, help="Keep hits whose id equals the query id (BEIR drops them)."),
    skip_unknown_qrels: bool = typer.Option(False, help="Drop, and count, judgements naming unknown queries or documents instead of failing."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross-encoder folder that reranks each query's top documents."),
    rerank_depth: int = typer.Option(DEFAULT_RERANK_DEPTH, "--rerank-depth", help="First-stage documents per query the cross-encoder rescores."),
) -> None:
    """Evaluate an index on a dataset split and print nDCG@10, MRR@10, Recall and MAP."""
    if config is not None:
        from retk.evaluation.matrix import run_from_cli

        run_from_cli(config, results_dir=output, console=console)
        return
    if dataset is None or index_path is None:
        raise RetkError("retk eval needs --dataset and --index, or --config")
    with _progress("pairs") as progress:
        task = progress.add_task("reranking", total=None, visible=rerank is not None)
        result = evaluate(
            index_path,
            dataset,
            split=split,
            depth=depth,
            ignore_identical_ids=not keep_identical_ids,
            on_unknown_qrels="skip" if skip_unknown_qrels else "error",
            run_path=run,
            output_path=output,
            rerank=rerank,
            rerank_depth=rerank_depth,
            rerank_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table = Table("metric", "value", title=f"{result.info['dataset']} {split} ({result.info['query_count']} queries)")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
    print(f"nDCG@10 {result.metrics['nDCG@10']:.4f}")


@app.command("info")
def info_command(index_path: Path = typer.Argument(..., metavar="INDEX", help="Index folder.")) -> None:
    """Print an index's manifest: encoder, size, build time and attributes."""
    index = Index.open(index_path)
    manifest = dict(index.manifest)
    manifest["attributes"] = {name: str(index.documents.table.schema.field(name).type) for name in index.documents.attribute_names}
    print(json.dumps(manifest, indent=2, sort_keys=True))


def _progress(unit: str = "docs") -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _route_by_domain(encoder: Encoder, domain: str) -> Encoder:
    """Set the domain of an encoder that routes by domain (an MoE encoder); reject --domain for others."""
    if not getattr(encoder, "supports_domain", False):
        raise RetkError(f"encoder {encoder.name} does not route by domain; --domain applies to MoE model folders from 'retk train moe'")
    encoder.domain = domain
    return encoder


def _snippet(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _with_instruction(spec: str | Encoder, instruction: str, corpus: Path) -> Encoder:
    from retk.embeddings import LLMEncoder
    from retk.embeddings.instructions import instruction_for

    text = instruction_for(corpus.name if corpus.is_dir() else corpus.parent.name) if instruction == "auto" else instruction
    if isinstance(spec, Encoder):
        raise RetkError("--instruction applies to LLM encoders only")
    encoder = load_encoder(spec, instruction=text)
    if not isinstance(encoder, LLMEncoder):
        raise RetkError(f"--instruction applies to LLM encoders only, not '{spec}'")
    return encoder
