"""Corpus, query and qrels loading with validation that names file, line and field."""

from retk.datasets.beir import BeirDataset, is_beir_folder
from retk.datasets.corpus import CorpusReader, SkipReport
from retk.datasets.documents import Document
from retk.datasets.judgements import Qrels, check_qrels, read_qrels, read_queries
from retk.datasets.multicpr import MultiCprCorpusReader, MultiCprDataset, is_multicpr_folder, open_dataset

__all__ = [
    "BeirDataset",
    "CorpusReader",
    "Document",
    "MultiCprCorpusReader",
    "MultiCprDataset",
    "Qrels",
    "SkipReport",
    "check_qrels",
    "is_beir_folder",
    "is_multicpr_folder",
    "open_dataset",
    "read_qrels",
    "read_queries",
]
