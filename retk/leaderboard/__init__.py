"""The static leaderboard site: ``retk leaderboard build RESULTS_DIR --out site/``.

Example::

    from retk.leaderboard import build_site
    page = build_site("results/scifact-bench", "site/scifact-bench", baseline="bm25")
"""

from retk.leaderboard.site import RunEntry, build_site, choose_baseline, compare_to_baseline, load_results

__all__ = ["RunEntry", "build_site", "choose_baseline", "compare_to_baseline", "load_results"]
