"""Screenshots of the page for docs/ (desktop and phone width), from a running labs-api.

    uv run labs-api --preload &             # the embedded default model (loaded first), the shipped transactions
    uv run python scripts/page_screenshots.py --url http://127.0.0.1:8000

It asks a transactions question and a general one, adds a small handbook and asks about it with
"Answer from my documents" on, then saves docs/screenshots/page-{desktop,phone}*.png. Needs Debian's
chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

OUT = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
HANDBOOK = ("# Staff handbook\n\n## Leave\n\nEvery employee gets 25 days of paid annual leave per year. Unused leave "
            "can be carried over until the end of March.\n\n## Expenses\n\nTravel expenses are reimbursed within 14 days "
            "when the receipt is attached.\n")


def ask(driver: webdriver.Chrome, text: str, timeout: float = 180) -> None:
    count = len(driver.find_elements(By.CSS_SELECTOR, "article.message.assistant"))
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(text, Keys.ENTER)
    WebDriverWait(driver, timeout).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.message.assistant")) > count
        and d.find_element(By.ID, "stop").get_attribute("hidden") is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        driver.set_window_size(1280, 860)
        driver.get(args.url + "/")
        driver.execute_script("localStorage.clear()")
        driver.refresh()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model").get_attribute("value"))
        ask(driver, "How much did I spend on fuel in March 2024?")
        ask(driver, "Give me three short tips for keeping receipts organised.")
        driver.save_screenshot(str(OUT / "page-desktop.png"))
        with tempfile.TemporaryDirectory() as scratch:
            handbook = Path(scratch) / "staff-handbook.md"
            handbook.write_text(HANDBOOK)
            driver.find_element(By.ID, "new-chat").click()
            driver.find_element(By.ID, "open-documents").click()
            driver.find_element(By.ID, "document-files").send_keys(str(handbook))
            WebDriverWait(driver, 180).until(lambda d: "staff-handbook.md" in d.find_element(By.ID, "documents-list").text)
            driver.save_screenshot(str(OUT / "page-documents.png"))
            driver.find_element(By.CSS_SELECTOR, "#documents-dialog [data-close]").click()
        driver.find_element(By.ID, "open-settings").click()
        driver.find_element(By.ID, "max-tokens").send_keys("60")
        driver.find_element(By.CSS_SELECTOR, "#settings-form button[value=close]").click()
        if not driver.find_element(By.ID, "use-docs").is_selected():
            driver.find_element(By.ID, "use-docs").click()
        ask(driver, "How many days of paid annual leave does an employee get?")
        driver.save_screenshot(str(OUT / "page-desktop-sources.png"))
        driver.set_window_size(390, 844)
        time.sleep(0.5)
        driver.find_element(By.ID, "open-sidebar").click()
        time.sleep(0.5)
        driver.save_screenshot(str(OUT / "page-phone-list.png"))
        driver.find_element(By.CSS_SELECTOR, "#conversations li:last-child .open-chat").click()
        time.sleep(0.5)
        driver.save_screenshot(str(OUT / "page-phone.png"))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
