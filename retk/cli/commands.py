"""The ``retk index``, ``search``, ``eval`` and ``info`` commands: thin wrappers over the Python API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from retk.cli.app import app, console
from retk.evaluation import evaluate
from retk.retrieval import Index, build_index


@app.command("index")
def index_command(
    corpus: Path = typer.Argument(..., help="BEIR dataset folder, or a corpus file (.jsonl, .csv, .tsv, .parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to create."),
    encoder: str = typer.Option("minilm", help="'minilm' (bundled all-MiniLM-L6-v2), 'bm25', or a local sentence-transformers folder."),
    index_spec: str = typer.Option("auto", "--index-spec", help="FAISS factory string (Flat, HNSW32,Flat, IVF1024,Flat...); 'auto' is Flat up to 200,000 documents, HNSW above."),
    id_field: Optional[str] = typer.Option(None, help="Id column or key of a corpus file (default: _id, else id)."),
    title_field: str = typer.Option("title", help="Title column or key of a corpus file."),
    text_field: str = typer.Option("text", help="Text column or key of a corpus file."),
    batch_documents: int = typer.Option(1024, help="Documents read and encoded per batch."),
    overwrite: bool = typer.Option(False, help="Replace an existing index folder once the new one is complete."),
) -> None:
    """Build an index folder from a corpus."""
    options = {}
    if corpus.is_file():
        options = {"id_field": id_field, "title_field": title_field, "text_field": text_field}
    with _progress() as progress:
        task = progress.add_task(f"indexing {corpus.name}", total=None)
        index = build_index(
            corpus,
            out,
            encoder,
            index_spec=index_spec,
            batch_documents=batch_documents,
            overwrite=overwrite,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
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
) -> None:
    """Search an index and print the top-k documents."""
    result = Index.open(index_path).search(query, k=k)
    if as_json:
        hits = [
            {"rank": h.rank, "doc_id": h.doc_id, "score": h.score, "title": h.title, "text": h.text, "attributes": h.attributes}
            for h in result.hits
        ]
        print(json.dumps({"query": query, "k": k, "hits": hits, "note": result.note}, ensure_ascii=False, indent=2))
        return
    table = Table("rank", "doc id", "score", "title / text")
    for hit in result.hits:
        table.add_row(str(hit.rank), hit.doc_id, f"{hit.score:.4f}", _snippet(hit.title or hit.text))
    console.print(table)
    if result.note:
        console.print(result.note)


@app.command("eval")
def eval_command(
    dataset: Path = typer.Option(..., help="BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/)."),
    index_path: Path = typer.Option(..., "--index", help="Index folder built from that dataset's corpus."),
    split: str = typer.Option("test", help="Qrels split: qrels/<split>.tsv."),
    output: Optional[Path] = typer.Option(None, help="Results JSON to write."),
    run: Optional[Path] = typer.Option(None, help="TREC run file to write."),
    depth: int = typer.Option(1000, help="Documents retrieved per query."),
    keep_identical_ids: bool = typer.Option(False, help="Keep hits whose id equals the query id (BEIR drops them)."),
    skip_unknown_qrels: bool = typer.Option(False, help="Drop, and count, judgements naming unknown queries or documents instead of failing."),
) -> None:
    """Evaluate an index on a dataset split and print nDCG@10, MRR@10, Recall and MAP."""
    result = evaluate(
        index_path,
        dataset,
        split=split,
        depth=depth,
        ignore_identical_ids=not keep_identical_ids,
        on_unknown_qrels="skip" if skip_unknown_qrels else "error",
        run_path=run,
        output_path=output,
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


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("docs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def _snippet(text: str, width: int = 90) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
