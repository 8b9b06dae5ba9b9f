"""The web console in headless Chromium (selenium + Debian's chromium-driver), beside the real
topology: log in with an admin token, create an EAB key, see an issued order, revoke its
certificate (through the signer, after a confirmation step); search by name and serial, pages,
the audit log. Screenshots go to build/screenshots/."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import AdminService, issue

pytestmark = pytest.mark.integration

SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# How long the browser waits for an element (seconds).
WAIT_SECONDS = 20


@pytest.fixture
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="acme-ra-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def arrive(driver: object, url: str) -> None:
    """Wait until the browser shows `url`: a click returns before the navigation it starts ends."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # selenium's stubs type the driver as object: the condition takes a WebDriver.
        WebDriverWait(driver, WAIT_SECONDS).until(expected_conditions.url_to_be(url))  # type: ignore[type-var,arg-type]
    except TimeoutException:
        pytest.fail(f"the browser shows {driver.current_url}, not {url}")  # type: ignore[attr-defined]


def shot(driver: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))  # type: ignore[attr-defined]


def test_console_login_eab_key_order_and_revocation(admin_service: AdminService, browser: object,
                                                    tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    issued = issue(admin_service, "console.localhost", tmp_path)
    driver = browser
    base = admin_service.url

    # Not logged in: every page sends the browser to the login form.
    driver.get(f"{base}/certificates")  # type: ignore[attr-defined]
    assert driver.current_url == f"{base}/login"  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys("acmera_not-a-token")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    assert "not a valid admin token" in driver.find_element(By.CSS_SELECTOR, ".error").text  # type: ignore[attr-defined]
    shot(driver, "01-login-refused")

    driver.find_element(By.ID, "token").send_keys(admin_service.token)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/orders")
    cookie = driver.get_cookie("acme_ra_admin_session")  # type: ignore[attr-defined]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    shot(driver, "02-orders")

    # The issued order, with its status.
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-order="{issued.order["id"]}"]')  # type: ignore[attr-defined]
    assert "console.localhost" in row.text and "valid" in row.text
    shot(driver, "02-orders")
    row.find_element(By.LINK_TEXT, issued.order["id"]).click()
    assert "dns:console.localhost" in driver.find_element(By.TAG_NAME, "main").text  # type: ignore[attr-defined]
    shot(driver, "03-order")

    # A new EAB key: its HMAC key is shown once.
    driver.find_element(By.LINK_TEXT, "EAB keys").click()  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "label").send_keys("physics department")  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "allow").send_keys(".physics.example.edu")  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "no_wildcards").click()  # type: ignore[attr-defined]
    driver.find_element(By.ID, "create-eab-key").click()  # type: ignore[attr-defined]
    kid = driver.find_element(By.ID, "new-kid").text  # type: ignore[attr-defined]
    hmac_key = driver.find_element(By.ID, "new-hmac").text  # type: ignore[attr-defined]
    assert kid.startswith("kid-") and len(hmac_key) == 43
    shot(driver, "04-eab-key-created")
    with httpx.Client(base_url=base, headers=admin_service.auth, trust_env=False) as client:
        keys = {k["kid"]: k for k in client.get("/api/eab-keys").json()}
    assert keys[kid]["label"] == "physics department"
    assert keys[kid]["policy"] == {"allow": [".physics.example.edu"], "deny": [], "wildcards": False}
    driver.get(f"{base}/eab-keys")  # type: ignore[attr-defined]
    assert hmac_key not in driver.page_source  # type: ignore[attr-defined]

    # Revoke the certificate: the signer revokes upstream and records it.
    driver.find_element(By.LINK_TEXT, "Certificates").click()  # type: ignore[attr-defined]
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-certificate="{issued.certificate["id"]}"]')  # type: ignore[attr-defined]
    assert "valid" in row.text
    Select(row.find_element(By.NAME, "reason")).select_by_visible_text("keyCompromise")
    shot(driver, "05-certificates")
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    # Not yet: the confirmation page names the certificate and the reason chosen.
    arrive(driver, f"{base}/certificates/{issued.certificate['id']}/revoke?reason=1")
    assert driver.find_element(By.ID, "confirm-serial").text == issued.certificate["serial"]  # type: ignore[attr-defined]
    assert Select(driver.find_element(By.ID, "confirm-reason")).first_selected_option.text == "keyCompromise"  # type: ignore[attr-defined]
    shot(driver, "05-revoke-confirmation")
    driver.find_element(By.ID, "confirm-revoke").click()  # type: ignore[attr-defined]
    notice = driver.find_element(By.CSS_SELECTOR, ".notice").text  # type: ignore[attr-defined]
    assert f"Certificate {issued.certificate['serial']} revoked." == notice
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-certificate="{issued.certificate["id"]}"]')  # type: ignore[attr-defined]
    assert "revoked (reason 1)" in row.text
    shot(driver, "06-certificate-revoked")
    with httpx.Client(base_url=base, headers=admin_service.auth, trust_env=False) as client:
        stored = client.get(f"/api/certificates/{issued.certificate['id']}").json()
    assert stored["status"] == "revoked" and stored["revocation_reason"] == 1

    # Upstream health and the queue backlog.
    driver.find_element(By.LINK_TEXT, "Upstream").click()  # type: ignore[attr-defined]
    assert driver.find_element(By.ID, "signer-health").text.startswith("ready")  # type: ignore[attr-defined]
    shot(driver, "07-upstream")
    driver.find_element(By.LINK_TEXT, "Queues").click()  # type: ignore[attr-defined]
    table = driver.find_element(By.ID, "queues").text  # type: ignore[attr-defined]
    assert "validator" in table and "signer" in table
    shot(driver, "08-queues")

    # Log out: the session is gone.
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/login")
    driver.get(f"{base}/orders")  # type: ignore[attr-defined]
    arrive(driver, f"{base}/login")


def test_inventory_charts_and_what_lapses(admin_service: AdminService, browser: object, tmp_path: Path) -> None:
    """The inventory page in Chromium: both charts drawn with bars in proportion to their values,
    a certificate about to lapse listed, a renewed one not."""
    import asyncio
    import datetime as dt

    from selenium.webdriver.common.by import By

    from acme_ra.config import ENV_PREFIX
    from acme_ra.db.engine import Database
    from tests.support.history import History

    issue(admin_service, "inventory.localhost", tmp_path)
    now = dt.datetime.now(dt.UTC)

    async def history() -> None:
        db = Database(admin_service.env[f"{ENV_PREFIX}DATABASE_URL"])
        try:
            made = History(db)
            await made.start()
            for days in (3, 4, 12):  # two in the first week, one in the second
                await made.order("valid", now, not_after=now + dt.timedelta(days=days),
                                 names=f"lapsing{days}.inventory.example.edu", upstream="sectigo")
            await made.order("valid", now, not_after=now + dt.timedelta(days=5), names="renewed.inventory.example.edu")
            await made.order("valid", now, not_after=now + dt.timedelta(days=80), names="renewed.inventory.example.edu")
        finally:
            await db.dispose()

    asyncio.run(history())
    driver = browser
    base = admin_service.url
    driver.get(f"{base}/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys(admin_service.token)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/orders")
    driver.find_element(By.LINK_TEXT, "Inventory").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/inventory")
    for chart in ("expiring-per-week", "issued-per-day"):
        svg = driver.find_element(By.ID, chart)  # type: ignore[attr-defined]
        assert svg.size["width"] > 300 and svg.size["height"] > 80, chart
        bars = svg.find_elements(By.CSS_SELECTOR, "rect.bar")
        values = [int(bar.get_attribute("data-value")) for bar in bars]
        heights = [bar.rect["height"] for bar in bars]  # as Chromium laid them out
        top = max(values)
        assert top > 0, chart
        for value, height in zip(values, heights, strict=True):
            assert abs(height - heights[values.index(top)] * value / top) < 1.5, (chart, values, heights)
    weekly = [int(bar.get_attribute("data-value")) for bar in
              driver.find_elements(By.CSS_SELECTOR, "#expiring-per-week rect.bar")]  # type: ignore[attr-defined]
    assert len(weekly) == 13 and weekly[0] >= 3 and weekly[1] >= 1
    lapsing = driver.find_element(By.ID, "lapsing").text  # type: ignore[attr-defined]
    assert "lapsing3.inventory.example.edu" in lapsing and "lapsing12.inventory.example.edu" in lapsing
    assert "renewed.inventory.example.edu" not in lapsing and "sectigo" in lapsing
    shot(driver, "08-inventory")
    driver.find_element(By.NAME, "upstream").send_keys("nothing-here")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "form.filters button").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/inventory?upstream=nothing-here")
    assert "every certificate expiring in the next 30 days was renewed" in driver.find_element(  # type: ignore[attr-defined]
        By.ID, "lapsing").text


def log_in(driver: object, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/login")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "token").send_keys(token)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/orders")


def test_search_pages_revocation_confirmation_and_audit(admin_service: AdminService, browser: object,
                                                        tmp_path: Path) -> None:
    """Search by name and by serial (as people write it), page through the results, cancel a
    revocation at its confirmation, then confirm it; the audit log says who, when, from where."""
    import asyncio
    import datetime as dt
    import urllib.parse

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from acme_ra.config import ENV_PREFIX
    from acme_ra.db.engine import Database
    from tests.support.history import History

    issued = issue(admin_service, "search.localhost", tmp_path)
    now = dt.datetime.now(dt.UTC)

    async def history() -> None:
        db = Database(admin_service.env[f"{ENV_PREFIX}DATABASE_URL"])
        try:
            made = History(db)
            await made.start()
            for i in range(30):
                await made.order("valid", now, not_after=now + dt.timedelta(days=60 + i),
                                 names=f"p{i:02}.paging.example.edu", created=now - dt.timedelta(minutes=i))
        finally:
            await db.dispose()

    asyncio.run(history())
    driver = browser
    base = admin_service.url
    log_in(driver, base, admin_service.token)

    # By name, 25 a page: 25 then 5, no certificate twice.
    driver.find_element(By.LINK_TEXT, "Certificates").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates")
    driver.get(f"{base}/certificates?rows=25")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "search").send_keys("PAGING.example.edu")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "search-button").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates?q=PAGING.example.edu&rows=25")

    def names_shown() -> list[str]:
        rows = driver.find_elements(By.CSS_SELECTOR, "#certificates tbody tr[data-certificate]")  # type: ignore[attr-defined]
        return [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows]

    first = names_shown()
    assert first == [f"p{i:02}.paging.example.edu" for i in range(25)]
    assert driver.find_element(By.ID, "page-number").text == "page 1"  # type: ignore[attr-defined]
    shot(driver, "09-search-page-1")
    driver.find_element(By.ID, "next-page").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates?q=PAGING.example.edu&rows=25&page=2")
    assert names_shown() == [f"p{i:02}.paging.example.edu" for i in range(25, 30)]
    assert not driver.find_elements(By.ID, "next-page")  # type: ignore[attr-defined]
    shot(driver, "10-search-page-2")
    driver.find_element(By.ID, "previous-page").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates?q=PAGING.example.edu&rows=25")

    # By serial: upper case, with colons, leading zero pairs.
    serial = issued.certificate["serial"]
    hexed = serial.upper().rjust(len(serial) + len(serial) % 2, "0")
    spelled = ":".join(hexed[i:i + 2] for i in range(0, len(hexed), 2))
    search = driver.find_element(By.ID, "search")  # type: ignore[attr-defined]
    search.clear()
    search.send_keys(spelled)
    driver.find_element(By.ID, "search-button").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates?{urllib.parse.urlencode({'q': spelled, 'rows': '25'})}")
    rows = driver.find_elements(By.CSS_SELECTOR, "#certificates tbody tr[data-certificate]")  # type: ignore[attr-defined]
    assert [row.get_attribute("data-certificate") for row in rows] == [issued.certificate["id"]]
    assert "search.localhost" in rows[0].text
    shot(driver, "11-search-serial")

    # Revoke: the confirmation step, cancelled, changes nothing.
    rows[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    arrive(driver, f"{base}/certificates/{issued.certificate['id']}/revoke?reason=0")
    assert "search.localhost" in driver.find_element(By.ID, "confirm-names").text  # type: ignore[attr-defined]
    driver.find_element(By.ID, "cancel-revoke").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/certificates")
    with httpx.Client(base_url=base, headers=admin_service.auth, trust_env=False, timeout=30) as client:
        assert client.get(f"/api/certificates/{issued.certificate['id']}").json()["status"] == "valid"

    # Confirmed, with another reason chosen on the confirmation page.
    driver.get(f"{base}/certificates/{issued.certificate['id']}/revoke")  # type: ignore[attr-defined]
    Select(driver.find_element(By.ID, "confirm-reason")).select_by_visible_text("superseded")  # type: ignore[attr-defined]
    before = dt.datetime.now(dt.UTC)
    driver.find_element(By.ID, "confirm-revoke").click()  # type: ignore[attr-defined]
    assert driver.find_element(By.CSS_SELECTOR, ".notice").text == f"Certificate {serial} revoked."  # type: ignore[attr-defined]
    after = dt.datetime.now(dt.UTC)
    with httpx.Client(base_url=base, headers=admin_service.auth, trust_env=False, timeout=30) as client:
        stored = client.get(f"/api/certificates/{issued.certificate['id']}").json()
        assert stored["status"] == "revoked" and stored["revocation_reason"] == 4
        [entry] = client.get("/api/audit", params={"subject": issued.certificate["id"]}).json()
    assert entry["action"] == "certificate.revoke" and entry["actor"] == "tests" and entry["client"] == "127.0.0.1"
    assert entry["token_id"] and entry["detail"]["reason"] == 4 and entry["detail"]["serial"] == serial
    assert before - dt.timedelta(seconds=1) <= dt.datetime.fromisoformat(entry["at"]) <= after

    # The audit log page shows it.
    driver.find_element(By.LINK_TEXT, "Audit log").click()  # type: ignore[attr-defined]
    arrive(driver, f"{base}/audit")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-audit="{entry["id"]}"]')  # type: ignore[attr-defined]
    assert "certificate.revoke" in row.text and "tests" in row.text and "127.0.0.1" in row.text
    assert issued.certificate["id"] in row.text
    shot(driver, "12-audit-log")
