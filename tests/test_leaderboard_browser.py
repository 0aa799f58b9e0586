"""The leaderboard site: its HTML and escaping, then the real thing in headless Chromium.

The browser part drives Debian's ``chromium`` through ``/usr/bin/chromedriver``
with selenium; Selenium Manager is never asked for anything (it would try to
download a driver). It clicks a column header and checks the order, applies a
filter, saves a screenshot under ``test-artifacts/`` and checks that a
results file whose model name contains ``<script>`` runs nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from retk.leaderboard import build_site, load_results

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
EVIL_MODEL = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
EVIL_RETRIEVER = "evil<script>window.__xss = 3</script>"
QUERIES = [f"q{i}" for i in range(40)]


def results_json(dataset: str, retriever: str, family: str, ndcg: list[float], qps: float, **extra: Any) -> dict[str, Any]:
    mean = sum(ndcg) / len(ndcg)
    data = {
        "dataset": dataset,
        "dataset_name": dataset,
        "split": "test",
        "retriever": {"hybrid": "fusion"}.get(family, family),
        "retriever_name": retriever,
        "family": family,
        "encoder": {"type": "bm25" if family == "lexical" else "sentence-transformers"},
        "encoder_name": extra.pop("encoder_name", retriever),
        "metrics": {"nDCG@10": mean, "MRR@10": mean / 2, "Recall@100": 0.8, "Recall@1000": 0.9, "MAP@1000": mean / 3},
        "per_query": {"nDCG@10": dict(zip(QUERIES, ndcg))},
        "timings": {"encode_documents_per_second": 900.0 if family == "lexical" else 120.5, "search_queries_per_second": qps},
        "index_bytes": 3 * 1024**2,
        "hardware": {"cpu": "Test CPU", "cpu_count": 2, "gpus": []},
        "created": "2026-01-01T00:00:00+00:00",
        "matrix": {"baseline": "bm25"},
        "reproduce": {"matrix": "retk eval --config configs/x.yaml", "steps": [f"retk index data/{dataset} --out idx --encoder {retriever}"]},
    }
    data.update(extra)
    return data


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    base = [0.3 + 0.01 * (i % 10) for i in range(40)]
    runs = [
        results_json("alpha", "bm25", "lexical", base, qps=2000.0),
        results_json("alpha", "dense-a", "dense", [v + 0.3 for v in base], qps=300.0),
        results_json("alpha", "hybrid", "hybrid", [v + 0.2 if i % 2 else v - 0.05 for i, v in enumerate(base)], qps=150.0),
        results_json("alpha", EVIL_RETRIEVER, "dense", [v - 0.2 for v in base], qps=50.0, encoder_name=EVIL_MODEL),
        results_json("beta", "bm25", "lexical", base, qps=1500.0),
        results_json("beta", "dense-a", "dense", [v - 0.1 for v in base], qps=250.0),
    ]
    for position, data in enumerate(runs):
        folder = root / data["dataset"]
        folder.mkdir(exist_ok=True)
        (folder / f"run{position}.json").write_text(json.dumps(data))
    (root / "broken.json").write_text("{not json")
    (root / "other.json").write_text(json.dumps({"something": "else"}))
    return root


@pytest.fixture(scope="module")
def site(results_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    build_site(results_dir, out, title="test board", trials=2000)
    return out


def test_site_files_and_numbers(site: Path, results_dir: Path) -> None:
    page = (site / "index.html").read_text()
    assert (site / "assets" / "site.js").is_file()
    assert (site / "assets" / "site.css").is_file()
    assert "http://" not in page
    assert "https://" not in page  # nothing from a CDN
    runs, warnings = load_results(results_dir)
    assert len(runs) == 6
    assert len(warnings) == 1
    assert "broken.json" in warnings[0]
    for run in runs:
        assert (site / "runs" / f"{run.id}.html").is_file()
        assert f'data-value="{run.metrics["nDCG@10"]!r}">{run.metrics["nDCG@10"]:.4f}' in page
    assert "<svg class=\"chart\"" in page
    # dense-a beats bm25 on every alpha query: a significant win mark, with its p-value in the title.
    row = re.search(r'data-run="alpha--dense-a">(.*?)</tr>', page, re.S).group(1)
    assert 'class="mark win"' in row
    assert "randomization, p = " in row


def test_every_results_string_is_escaped(site: Path) -> None:
    for path in [site / "index.html", *sorted((site / "runs").glob("*.html"))]:
        text = path.read_text()
        assert "<script>window" not in text, path
        assert "<img src=x" not in text, path
        assert text.count("<script") == 1, path  # only the site's own script tag
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in (site / "index.html").read_text()


def test_run_page_shows_provenance_and_the_reproducing_command(site: Path) -> None:
    page = (site / "runs" / "alpha--dense-a.html").read_text()
    assert "retk eval --config configs/x.yaml" in page
    assert "retk index data/alpha --out idx --encoder dense-a" in page
    assert "hardware.cpu" in page
    assert "Test CPU" in page
    assert json.loads((site / "runs" / "alpha--dense-a.json").read_text())["retriever_name"] == "dense-a"


def test_leaderboard_build_command(results_dir: Path, tmp_path: Path) -> None:
    from retk.cli.main import app

    done = CliRunner().invoke(app, ["leaderboard", "build", str(results_dir), "--out", str(tmp_path / "out"), "--test", "t-test", "--baseline", "dense-a"])
    assert done.exit_code == 0, done.output
    page = (tmp_path / "out" / "index.html").read_text()
    assert "t-test" in page
    assert "<strong>dense-a</strong>" in page
    empty = tmp_path / "empty"
    empty.mkdir()
    assert CliRunner().invoke(app, ["leaderboard", "build", str(empty), "--out", str(tmp_path / "none")]).exit_code != 0


def test_plain_eval_results_are_shown(tmp_path: Path) -> None:
    import retk

    dataset = tmp_path / "tiny"
    (dataset / "qrels").mkdir(parents=True)
    (dataset / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": f"d{i}", "text": f"doc {w}"}) for i, w in enumerate(["apple", "pear", "plum"])) + "\n")
    (dataset / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "pear"}) + "\n")
    (dataset / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    index = retk.build_index(dataset, tmp_path / "index", "bm25")
    retk.evaluate(index, dataset, output_path=tmp_path / "results" / "tiny-bm25.json")
    build_site(tmp_path / "results", tmp_path / "site")
    page = (tmp_path / "site" / "runs" / "tiny--bm25.html").read_text()
    assert "retk eval --dataset" in page
    assert f"--index {index.path.resolve()}" in page
    assert "KiB" in (tmp_path / "site" / "index.html").read_text()  # index size read from the folder


# --------------------------------------------------------------------------- headless Chromium


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common import selenium_manager

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Selenium Manager must not run: it downloads drivers")

    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", refuse)
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_argument("--window-size=1400,1100")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def visible_rows(table) -> list[Any]:
    return [row for row in table.find_elements("css selector", "tbody tr") if row.is_displayed()]


def test_site_in_headless_chromium(browser, site: Path) -> None:
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get((site / "index.html").as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.documentElement.getAttribute('data-ready')") == "1")
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    assert EVIL_MODEL in browser.find_element("css selector", "body").text

    section = browser.find_element("id", "dataset-alpha")
    table = section.find_element("css selector", "table")
    headers = table.find_elements("css selector", "thead th")
    column = [header.text.strip(" ↕▲▼") for header in headers].index("search queries/s")

    def column_values() -> list[float]:
        return [float(row.find_elements("css selector", "td")[column].get_attribute("data-value")) for row in visible_rows(table)]

    headers[column].click()  # numbers sort best-first: descending
    assert column_values() == [2000.0, 300.0, 150.0, 50.0]
    assert headers[column].get_attribute("aria-sort") == "descending"
    headers[column].click()
    assert column_values() == [50.0, 150.0, 300.0, 2000.0]
    name_column = 0
    headers[name_column].click()  # text sorts A to Z
    names = [row.find_elements("css selector", "td")[name_column].text.split(" baseline")[0] for row in visible_rows(table)]
    assert names == sorted(names, key=str.lower)

    Select(browser.find_element("id", "filter-family")).select_by_value("dense")
    families = {row.get_attribute("data-family") for row in visible_rows(table)}
    assert families == {"dense"}
    assert len(visible_rows(table)) == 2
    Select(browser.find_element("id", "filter-dataset")).select_by_value("alpha")
    assert not browser.find_element("id", "dataset-beta").is_displayed()
    assert not browser.find_element("id", "overall").is_displayed()
    assert section.is_displayed()

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "leaderboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    assert browser.execute_script("return typeof window.__xss") == "undefined"

    # The evil run's own page: provenance shown as text, nothing executed.
    link = next(a for a in browser.find_elements("css selector", "#dataset-alpha a") if a.text.startswith("evil"))
    link.click()
    WebDriverWait(browser, 30).until(lambda d: "evil" in d.title)
    assert browser.execute_script("return typeof window.__xss") == "undefined"
    assert EVIL_RETRIEVER in browser.find_element("css selector", "h2").text
    assert "retk eval --config configs/x.yaml" in browser.find_element("css selector", "pre.command").text
    browser.save_screenshot(str(ARTIFACTS / "leaderboard-run.png"))
