"""titlegen-serve's page in a real browser: headless Chromium loads it, submits an article, reads the titles.

Needs Debian's chromium and chromium-driver (.ci/run installs them). Outside CI the test is skipped without
them; under CI (CI=true) it fails, so that a missing browser never passes for a working page.
"""

from __future__ import annotations

import os

import pytest

from . import browser
from .test_serve import app_for, running

pytestmark = pytest.mark.slow  # a real browser

ARTICLE = "台北市政府今天宣布，明年起將在全市增設五百座公共自行車站。"


@pytest.fixture(scope="module")
def driver():
    problem = browser.missing()
    if problem and os.environ.get("CI") == "true":
        pytest.fail(problem)
    if problem:
        pytest.skip(problem)
    with browser.chromium() as driver:
        yield driver


def test_the_page_titles_an_article_with_each_chosen_strategy(trained_dir, driver):
    with running(app_for(trained_dir)) as client:
        url = str(client.base_url)

        def api_title(article: str, strategy: str | None) -> str:
            body = {"articles": [{"id": "page", "maintext": article}]}
            answer = client.post("/v1/titles", json=body | ({"strategy": strategy} if strategy else {})).json()
            return answer["titles"][0]["title"]

        cards = browser.ask_for_titles(driver, url, ("", "greedy", "beam"), article=ARTICLE)
        assert [c["strategy"] for c in cards] == ["server default", "greedy", "beam"]
        for card, strategy in zip(cards, (None, "greedy", "beam"), strict=True):
            assert card["state"] == "done"
            assert card["title"] == api_title(ARTICLE, strategy)
            assert card["time"].endswith(" s on the server") and float(card["time"].split()[0]) > 0

        # An example article, and a strategy left out.
        cards = browser.ask_for_titles(driver, url, ("top_p", "-", "beam_no_repeat"))
        example = driver.find_element("id", "article").get_property("value")
        assert example and [c["strategy"] for c in cards] == ["top_p", "beam_no_repeat"]
        assert [c["title"] for c in cards] == [api_title(example, "top_p"), api_title(example, "beam_no_repeat")]


def test_the_page_shows_the_servers_error_for_a_refused_article(trained_dir, driver):
    with running(app_for(trained_dir, "--max_article_chars", "10")) as client:
        (card,) = browser.ask_for_titles(driver, str(client.base_url), ("greedy", "-", "-"), article=ARTICLE)
    assert card["state"] == "failed"
    assert (
        card["title"]
        == "articles[0]: field 'maintext' holds 29 characters, more than the limit of 10 (max_article_chars)"
    )
