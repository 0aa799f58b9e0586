"""Corpus, query and qrels loading with validation that names file, line and field."""

from retk.datasets.beir import BeirDataset, is_beir_folder
from retk.datasets.corpus import CorpusReader, SkipReport
from retk.datasets.documents import Document
from retk.datasets.judgements import Qrels, check_qrels, read_qrels, read_queries

__all__ = [
    "BeirDataset",
    "CorpusReader",
    "Document",
    "Qrels",
    "SkipReport",
    "check_qrels",
    "is_beir_folder",
    "read_qrels",
    "read_queries",
]
