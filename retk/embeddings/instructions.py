"""Task instructions for instruction-following query encoders, one per BEIR dataset.

The wording is the one E5-Mistral-style retrievers use for BEIR, as listed in
BMRetriever's ``prompt.py``. An :class:`~retk.embeddings.llm.LLMEncoder`
puts the instruction into its query template and saves it in its config, so
the index manifest and every results JSON record the instruction used.
"""

from __future__ import annotations

from retk.errors import RetkError

TASK_INSTRUCTIONS: dict[str, str] = {
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "nq": "Given a question, retrieve Wikipedia passages that answer the question",
    "quora": "Given a question, retrieve questions that are semantically equivalent to the given question",
    "scidocs": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "trec-covid": "Given a query on COVID-19, retrieve documents that answer the query",
}


def instruction_for(dataset: str) -> str:
    """Return the task instruction for a dataset name such as ``scifact`` or ``scifact-1k``.

    The name is lower-cased. A name that starts with a known dataset followed
    by ``-`` or ``_``, such as the subset folder ``scifact-1k``, gets that
    dataset's instruction. Unknown names raise :class:`RetkError`.
    """
    name = dataset.lower()
    if name in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[name]
    for key in sorted(TASK_INSTRUCTIONS, key=len, reverse=True):
        if name.startswith((f"{key}-", f"{key}_")):
            return TASK_INSTRUCTIONS[key]
    known = ", ".join(sorted(TASK_INSTRUCTIONS))
    raise RetkError(f"no task instruction for dataset '{dataset}'; known datasets: {known}; pass the instruction text instead")
