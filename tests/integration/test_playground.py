"""The web playground in a real headless Chromium (Debian's chromium and chromedriver, driven
by selenium; nothing downloaded), served by the API directly and through the shipped nginx
config: pick the model, send, watch the text stream in, stop mid-reply (the job is
cancelled), a finished reply's speed, and the conversation exported as JSON.

A screenshot of each run is kept in $TOKENQ_TEST_ARTIFACTS (default tests/artifacts/).
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from shared.settings import DEFAULT_MODEL
from tests.integration.deploy_procs import Nginx, tool
from tests.integration.procs import ROOT, ApiProcess

pytestmark = pytest.mark.integration

ARTIFACTS = Path(os.environ.get("TOKENQ_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
# Sent as text: the page must show it as typed, never as markup.
MESSAGE = "Tell me a story about <b>dragons</b> & knights."


@pytest.fixture(scope="module")
def nginx(api: ApiProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    proc = Nginx(tmp_path_factory.mktemp("nginx"), f"127.0.0.1:{api.port}")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    path = tmp_path / "downloads"
    path.mkdir()
    return path


@pytest.fixture
def browser(downloads: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    # Selenium Manager would fetch a driver or a browser it found missing: offline it only
    # looks, and both paths are given anyway.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = tool("chromium")
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        "--disable-gpu",
    ):
        options.add_argument(argument)  # fmt: skip
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(tool("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, timeout_s: float = 180) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1)


def last_reply(driver: WebDriver) -> tuple[str, str, str, str]:
    """(state, text, meta, job id) of the last assistant message."""
    box = driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    return (
        box.get_attribute("data-state") or "",
        box.find_element(By.CSS_SELECTOR, ".text").text,
        box.find_element(By.CSS_SELECTOR, ".meta").text,
        box.get_attribute("data-job-id") or "",
    )


def set_field(driver: WebDriver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


@pytest.mark.parametrize("route", ["direct", "nginx"])
def test_the_playground_streams_stops_and_exports(
    route: str, request: pytest.FixtureRequest, api: ApiProcess, browser: WebDriver, downloads: Path
) -> None:
    base = request.getfixturevalue("nginx").url if route == "nginx" else api.url
    browser.get(f"{base}/playground")
    wait(browser, 30).until(
        lambda d: DEFAULT_MODEL in [o.text for o in Select(d.find_element(By.ID, "model")).options]
    )
    Select(browser.find_element(By.ID, "model")).select_by_value(DEFAULT_MODEL)
    set_field(browser, "system", "You are a storyteller.")
    set_field(browser, "temperature", "0.7")
    set_field(browser, "max-tokens", "3000")
    browser.find_element(By.ID, "ignore-eos").click()  # a reply that runs until stopped
    set_field(browser, "input", MESSAGE)
    browser.find_element(By.ID, "send").click()

    # Streamed: the text grows while the reply is running (through nginx too: unbuffered).
    wait(browser).until(lambda d: len(last_reply(d)[1]) > 10)
    first = last_reply(browser)[1]
    wait(browser).until(lambda d: len(last_reply(d)[1]) > len(first) + 10)
    state, _, _, job_id = last_reply(browser)
    assert state == "streaming" and len(job_id) == 32

    browser.find_element(By.ID, "stop").click()
    wait(browser, 60).until(lambda d: last_reply(d)[0] == "stopped")
    _, stopped_text, meta, _ = last_reply(browser)
    assert f"job {job_id} cancelled" in meta, meta
    record = httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()
    assert record["status"] == "cancelled", record
    user = browser.find_element(By.CSS_SELECTOR, ".msg.user .text")
    assert user.text == MESSAGE and not user.find_elements(By.TAG_NAME, "b")

    # A reply that finishes shows its speed and time to first token.
    browser.find_element(By.ID, "ignore-eos").click()
    set_field(browser, "max-tokens", "16")
    set_field(browser, "input", "Thank you!")
    browser.find_element(By.ID, "send").click()
    wait(browser).until(lambda d: last_reply(d)[0] in ("done", "error"))
    state, _, meta, _ = last_reply(browser)
    assert state == "done" and "tokens/s" in meta and "TTFT" in meta, meta
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / f"playground-{route}.png"))

    browser.find_element(By.ID, "export").click()
    deadline = time.monotonic() + 30
    while not (exported := list(downloads.glob("tokenq-conversation-*.json"))):
        assert time.monotonic() < deadline, "the export was not downloaded"
        time.sleep(0.1)
    saved = json.loads(exported[0].read_text())
    assert saved["system"] == "You are a storyteller." and saved["model"] == DEFAULT_MODEL
    assert [t["role"] for t in saved["turns"]] == ["user", "assistant"] * 2
    assert saved["turns"][0]["content"] == MESSAGE
    assert saved["turns"][1]["content"] == stopped_text and saved["turns"][1]["job_id"] == job_id
