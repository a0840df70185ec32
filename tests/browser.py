"""Headless Chromium (Debian's chromium and chromium-driver) driven by selenium, for titlegen-serve's page.

    python -m tests.browser http://127.0.0.1:8000/ docs/serve.png    # the README's screenshot

The command loads the page of a running server, picks the first example article, asks for titles with the
server's default decoding, greedy search and beam search, and saves a screenshot once all three are shown.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless, as root, and with none of Chromium's own connections (updates, sync, field trials), which a
# machine without network access refuses.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,700",
)


def missing() -> str | None:
    """What is missing to drive Chromium, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return None


@contextlib.contextmanager
def chromium() -> Iterator:
    """A selenium WebDriver for headless Chromium with a fresh profile, quit afterwards."""
    from selenium import webdriver

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # An explicit driver path: selenium never looks for (or downloads) a driver of its own.
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def ask_for_titles(driver, url: str, strategies: tuple[str, str, str], article: str | None = None) -> list[dict]:
    """Loads the page, fills in `article` (or picks the first example), chooses `strategies` ("" for the
    server's default, "-" for none) and submits; returns each result card's strategy, state ("done", or "failed"
    when the server refused the request), title (or the server's error) and time."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 60)
    wait.until(lambda d: "parameters" in d.find_element(By.ID, "model").text)
    if article is None:
        Select(driver.find_element(By.ID, "example")).select_by_index(1)
    else:
        textarea = driver.find_element(By.ID, "article")
        textarea.clear()
        textarea.send_keys(article)
    for number, strategy in enumerate(strategies, start=1):
        Select(driver.find_element(By.ID, f"strategy-{number}")).select_by_value(strategy)
    driver.find_element(By.ID, "submit").click()
    expected = sum(s != "-" for s in strategies)

    def cards(d):
        found = d.find_elements(By.CSS_SELECTOR, "#results .card")
        done = len(found) == expected and all(c.get_attribute("data-state") for c in found)  # answered
        return found if done else False

    return [
        {
            "strategy": card.find_element(By.TAG_NAME, "h2").text,
            "state": card.get_attribute("data-state"),
            "title": card.find_element(By.CLASS_NAME, "title").get_property("textContent"),  # exactly, unrendered
            "time": card.find_element(By.CLASS_NAME, "time").text,
        }
        for card in wait.until(cards)
    ]


def main(argv: list[str]) -> None:
    url, output = argv
    with chromium() as driver:
        for card in ask_for_titles(driver, url, ("", "greedy", "beam")):
            print(card)
        driver.save_screenshot(output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(sys.argv[1:])
