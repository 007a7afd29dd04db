"""A headless Chromium on Horizon of ``tools/cinder-stack`` (Selenium).

Debian's ``chromium`` and ``chromium-driver`` packages (``tools/bootstrap``):
Selenium gets both paths, so it never looks for or downloads a browser. Every
wait has a deadline; a failing step saves a screenshot and the page's HTML in
``.test-logs/horizon/`` to show what the browser saw.
"""

import os
import time

from selenium import webdriver
from selenium.common import exceptions as selenium_exc
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e import stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SHOTS = os.environ.get("HORIZON_SCREENSHOTS") or os.path.join(stack.REPO, ".test-logs",
                                                                "horizon")
# Deadlines against hanging only: a page takes ~1.5 s on a quiet machine, but
# Horizon renders each one in Python, and the test machine is shared.
WAIT = 240          # seconds for a page or a dialog
STATUS_WAIT = 300   # seconds for a backup or restore to finish


def start_chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox",  # as root, Chromium needs --no-sandbox
                "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
                "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Horizon:
    """One logged-in browser session on the stack's Horizon."""

    def __init__(self, username, password):
        self.url = stack.openrc()["HORIZON_URL"]
        self.driver = start_chromium()
        self.driver.set_page_load_timeout(WAIT)
        self.login(username, password)

    def close(self):
        self.driver.quit()

    # -- pages ---------------------------------------------------------------------------

    def open(self, path):
        self.driver.get(self.url + path)

    def wait(self, condition, what, timeout=WAIT):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.3).until(condition)
        except selenium_exc.TimeoutException:
            self.save_evidence("timeout")
            raise AssertionError("Horizon: timed out after %d s waiting for %s (see %s)"
                                 % (timeout, what, SHOTS)) from None

    def visible(self, css, what=None):
        return self.wait(expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, css)), what or css)

    def clickable(self, css, what=None):
        return self.wait(expected_conditions.element_to_be_clickable(
            (By.CSS_SELECTOR, css)), what or css)

    def login(self, username, password):
        # No compute service in the stack: /project/ itself would say "not
        # authorized", so the login goes straight to the Volumes panel.
        self.open("/auth/login/?next=/project/volumes/")
        self.visible("#id_username").send_keys(username)
        self.driver.find_element(By.CSS_SELECTOR, "#id_password").send_keys(password)
        self.driver.find_element(By.CSS_SELECTOR, "#loginBtn, button[type=submit]").click()
        self.visible("#volumes", "the Volumes panel after logging in")

    # -- tables and dialogs --------------------------------------------------------------

    def row(self, table, object_id):
        return self.visible("#%s__row__%s" % (table, object_id),
                            "row %s of table %s" % (object_id, table))

    def row_action(self, table, object_id, action):
        """Click a row's action, opening its drop-down first if it is in there."""
        row = self.row(table, object_id)
        link_css = "#%s__row_%s__action_%s" % (table, object_id, action)
        link = row.find_element(By.CSS_SELECTOR, link_css)
        if not link.is_displayed():
            row.find_element(By.CSS_SELECTOR, ".dropdown-toggle").click()
        self.clickable(link_css, "the %s action of %s" % (action, object_id)).click()

    def dialog(self):
        """The modal form that a row action opened (Horizon loads it into the page)."""
        return self.visible(".modal-dialog form", "the dialog")

    def submit(self, form):
        form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
        self.wait(expected_conditions.invisibility_of_element_located(
            (By.CSS_SELECTOR, ".modal-dialog form")), "the dialog to close")

    def wait_row_text(self, path, table, object_id, text, timeout=STATUS_WAIT):
        """Reload the panel until the object's row shows ``text`` (e.g. a status)."""
        deadline = time.monotonic() + timeout
        while True:
            self.open(path)
            try:
                if text in self.row(table, object_id).text:
                    return
            except AssertionError:
                pass  # not listed yet
            if time.monotonic() > deadline:
                self.save_evidence("row-text")
                raise AssertionError("Horizon: %s never showed %r in %s within %d s"
                                     % (object_id, text, path, timeout))
            time.sleep(2)

    # -- evidence ------------------------------------------------------------------------

    def screenshot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, name + ".png")
        self.driver.save_screenshot(path)
        return path

    def save_evidence(self, name):
        try:
            self.screenshot("failed-" + name)
            with open(os.path.join(SHOTS, "failed-%s.html" % name), "w") as page:
                page.write(self.driver.page_source)
        except Exception:  # evidence only: the original failure matters
            pass
