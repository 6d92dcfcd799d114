"""The clinician's page in a real browser: Debian's chromium (headless, driven by its chromedriver through
Selenium) loads GET /Patient/{id} from the running record service with the token in an Authorization header
(set through the DevTools protocol), finds the right number of chart points and severity bands, and a Part 2
medication withheld from a token without that clearance does not appear. Saves a screenshot
(.cache/screenshots/clinician-page.png; the README shows a copy)."""

# ruff: noqa: S106 -- token names are test fixtures, not secrets
from __future__ import annotations

import copy
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.common.events.examples import EXAMPLES
from services.common.settings import REPO_ROOT
from tests.outcomes.conftest import SOURCE, OutcomesStack, eventually, patient_event, phq9_event, unique
from tests.outcomes.test_service import START, patient_ref

pytestmark = pytest.mark.integration
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")
GAD7_ITEMS = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
SCREENSHOT = REPO_ROOT / ".cache" / "screenshots" / "clinician-page.png"


def _event(kind: str, pid: str, **data: Any) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLES[f"org.carebus.{kind}.v1"])
    event.update(id=unique("evt"), source=SOURCE)
    event["data"].update(patient_id=pid, **data)
    return event


def gad7_event(pid: str, day: int, total: int) -> dict[str, Any]:
    answers, remaining = [], total
    for _ in GAD7_ITEMS:
        answers.append(min(3, remaining))
        remaining -= answers[-1]
    when = (START + timedelta(days=day)).isoformat().replace("+00:00", "Z")
    return _event("assessment.completed", pid, instrument="gad-7", assessment_id=unique("GAD7"), authored=when,
                  reported_total=None, encounter_id=None,
                  items=[{"code": c, "answer": a} for c, a in zip(GAD7_ITEMS, answers, strict=True)])


def _browser(token: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,1900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {token}"}})
    return driver


@pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="chromium + chromium-driver (deploy/local/bootstrap.sh)")
def test_the_page_in_a_real_browser(stack: OutcomesStack) -> None:
    from selenium.webdriver.common.by import By

    pid = unique("W")
    ref = patient_ref(SOURCE, pid)
    phq9 = [(0, 21), (28, 18), (56, 14), (84, 11), (130, 7), (200, 4)]
    events: list[dict[str, Any]] = [patient_event(SOURCE, pid)]
    events += [phq9_event(SOURCE, pid, START + timedelta(days=d), total) for d, total in phq9]
    events += [gad7_event(pid, d, total) for d, total in ((0, 15), (84, 9), (200, 5))]
    events.append(_event("diagnosis.recorded", pid, diagnosis_id=unique("DX"), encounter_id=None))
    events.append(_event("medication.prescribed", pid, prescription_id="RX-S1", encounter_id=None))
    events.append(_event("medication.changed", pid, prescription_id="RX-S2", replaces_prescription_id="RX-S1",
                         encounter_id=None))
    events.append(_event("medication.prescribed", pid, prescription_id="RX-B1", encounter_id=None,
                         medication={"code": "1819", "display": "buprenorphine",
                                     "system": "http://www.nlm.nih.gov/research/umls/rxnorm"}, reason_codes=[]))
    for n, modality in enumerate(("cbt", "cbt", "dbt")):
        events.append(_event("session.completed", pid, session_id=unique("S"), appointment_id=None, referral_id=None,
                             modality=modality, start=(START + timedelta(days=7 * (n + 1))).isoformat()))
    stack.send(*events)
    eventually(lambda: stack.record.search_all("Observation", params={
        "patient": ref, "code": "urn:carebus:codesystem:outcomes|phq-9-episode"}), what="outcomes")

    driver = _browser("test-token-full")
    try:
        driver.get(f"{stack.record.base_url}/Patient/{ref.removeprefix('Patient/')}")
        phq_points = driver.find_elements(By.CSS_SELECTOR, "svg[data-instrument='phq-9'] circle.point")
        assert [float(p.get_attribute("data-value")) for p in phq_points] == [t for _, t in phq9]
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg[data-instrument='phq-9'] rect.band")) == 5
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg[data-instrument='gad-7'] circle.point")) == 3
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg[data-instrument='gad-7'] rect.band")) == 4
        assert len(driver.find_elements(By.CSS_SELECTOR, "svg[data-instrument='c-ssrs'] rect.band")) == 4
        assert driver.find_element(By.CSS_SELECTOR, "[data-outcome='remitted']")
        text = driver.find_element(By.TAG_NAME, "body").text
        assert "buprenorphine" in text and "dose change" in text and "sertraline" in text
        sessions = driver.find_element(By.ID, "sessions").text.lower()
        assert sessions.count("dialectical") + sessions.count("dbt") >= 1 and "cognitive" in sessions
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000
    finally:
        driver.quit()

    uncleared = _browser("test-token-bh")  # behavioural health, but no 42 CFR Part 2 clearance
    try:
        uncleared.get(f"{stack.record.base_url}/Patient/{ref.removeprefix('Patient/')}")
        text = uncleared.find_element(By.TAG_NAME, "body").text
        assert "sertraline" in text
        assert "buprenorphine" not in text.lower() and "part 2" not in text.lower()
        assert len(uncleared.find_elements(By.CSS_SELECTOR, "svg[data-instrument='phq-9'] circle.point")) == 6
    finally:
        uncleared.quit()
    # the same path still answers FHIR JSON to a FHIR client
    assert stack.record.fhir(f"/Patient/{ref.removeprefix('Patient/')}")["resourceType"] == "Patient"


def test_clinic_view_lists_open_tasks(stack: OutcomesStack) -> None:
    pid = unique("K")
    stack.send(patient_event(SOURCE, pid), phq9_event(SOURCE, pid, START, 12, item9=1))
    ref = patient_ref(SOURCE, pid)
    eventually(lambda: stack.record.search_all("Task", params={"patient": ref}), what="Task")
    page = stack.record.get("/clinic", token="full", headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert ref in page.text and "PHQ-9 item 9" in page.text
    assert stack.record.get("/clinic", token=None, headers={"accept": "text/html"}).status_code == 401


def test_screenshot_path_is_the_readme_one() -> None:
    assert Path("docs/clinician-page.png").as_posix() in (REPO_ROOT / "README.md").read_text(encoding="utf-8")
