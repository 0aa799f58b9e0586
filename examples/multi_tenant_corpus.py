"""Write one corpus that mixes SciFact and the DBpedia sample, each document tagged with its source.

Every record keeps its real ``_id``, ``title``, ``text`` and ``metadata``
(DBpedia's ``metadata.url`` becomes the ``url`` attribute) and gains
``metadata.domain``: ``scifact`` or ``dbpedia``. That is the multi-tenant case
of filtered search: one index, one tenant per query through
``--filter "domain = 'scifact'"``.

Usage::

    python examples/multi_tenant_corpus.py "$RETK_DATA_DIR" /tmp/multi-tenant
    retk index /tmp/multi-tenant/corpus.jsonl --out runs/multi-tenant

The output folder is created if needed and must not be inside the repository's
tracked files (the corpus is derived from the shared datasets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SOURCES = {"scifact": "scifact/corpus.jsonl", "dbpedia": "dbpedia-entity-5k/corpus.jsonl"}


def write_multi_tenant_corpus(data_dir: Path, out_dir: Path, limit: int | None = None) -> Path:
    """Write ``out_dir/corpus.jsonl``: the first ``limit`` documents of each source (all by default).

    Returns the corpus path. Ids stay unique because SciFact ids are numbers
    and DBpedia ids are ``<dbpedia:...>``; a collision raises ``ValueError``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "corpus.jsonl"
    seen: set[str] = set()
    with target.open("w", encoding="utf-8") as output:
        for domain, relative in SOURCES.items():
            with (data_dir / relative).open(encoding="utf-8") as source:
                for number, line in enumerate(source):
                    if limit is not None and number >= limit:
                        break
                    record = json.loads(line)
                    if record["_id"] in seen:
                        raise ValueError(f"{data_dir / relative}:{number + 1}: id {record['_id']} already used by another source")
                    seen.add(record["_id"])
                    metadata = dict(record.get("metadata") or {})
                    metadata["domain"] = domain
                    record["metadata"] = metadata
                    output.write(json.dumps(record, ensure_ascii=False) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="the shared datasets folder (holds scifact/ and dbpedia-entity-5k/)")
    parser.add_argument("out_dir", type=Path, help="folder to write corpus.jsonl into")
    parser.add_argument("--limit", type=int, default=None, help="documents taken from each source (default: all)")
    args = parser.parse_args(argv)
    path = write_multi_tenant_corpus(args.data_dir, args.out_dir, args.limit)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
