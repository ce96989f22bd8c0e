"""The web UI in Debian's Chromium, driven by Playwright, end to end.

From ``jit-bastion user add`` to a shell: the invitation page, its QR
code and secret, a code computed from that secret, login, the request
form, the certificate download, and a real ``ssh -J`` through the bastion
to a real sshd with exactly what the pages gave. An admin then revokes
the grant in the browser and the bastion cuts the live session. Every
page is kept as a screenshot under ``artifacts/screenshots/``.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from appliance import identity
from tests.harness import ApplianceUnderTest, Client, SSHDTarget, keygen
from tests.web.people import PASSWORD, enroll_person
from tests.web.server import WebUnderTest

pytest_plugins = ["tests.web.fixtures"]
pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium; Playwright's own browsers are never installed."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def shot(page: Page, name: str) -> None:
    """Keep a screenshot of the page as a test artifact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def new_page(chromium: Browser) -> Page:
    page = chromium.new_context(ignore_https_errors=True, accept_downloads=True)
    return page.new_page()


def enroll(page: Page, link: str) -> str:
    """Open the invitation, enroll with a code from the shown secret."""
    page.goto(link)
    shot(page, "01-enroll")
    assert page.locator("#qr svg").count() == 1
    secret = page.inner_text("#totp-secret")
    typed = identity.import_totp_secret(identity.Secret(secret)).reveal()
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.fill("#code", pyotp.TOTP(typed).now())
    page.click("form.stack button[type=submit]")
    shot(page, "02-recovery-codes")
    assert page.locator("#recovery-codes li").count() == 10
    return typed


def log_in(page: Page, url: str, name: str, secret: str, shot_name: str) -> None:
    """Log in with a code one step ahead (enrollment spent this one)."""
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", PASSWORD)
    page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))
    shot(page, shot_name)
    page.click("form.stack button[type=submit]")


def request_access(page: Page, public_key: str) -> None:
    page.select_option("#target", "web01")
    page.fill("#reason", "<b>check</b> the disk & logs")
    page.fill("#duration", "10m")
    page.fill("#public_key", public_key)
    shot(page, "04-request")
    page.click("form.stack button[type=submit]")
    page.wait_for_selector("#ssh-config")
    shot(page, "05-result")


def write_client_files(page: Page, home: Path, target: SSHDTarget) -> list[str]:
    """Save what the result page gives where it says; return the command.

    Only ``~`` is replaced (OpenSSH expands it from the password file,
    not $HOME); a ``Host *`` block adds what a person's own config
    would: the known_hosts file and batch mode for the test.
    """
    jit_dir = home / ".ssh" / "jit"
    jit_dir.mkdir(parents=True, exist_ok=True)
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    download.save_as(str(jit_dir / download.suggested_filename))
    known_hosts = home / ".ssh" / "known_hosts"
    lines = [page.inner_text("#known-hosts").strip(), target.known_hosts_line()]
    known_hosts.write_text("\n".join(lines) + "\n")
    config = page.inner_text("#ssh-config").replace("~/", f"{home}/")
    config += (
        f"\nHost *\n    UserKnownHostsFile {known_hosts}\n"
        "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n"
    )
    (jit_dir / "web01.conf").write_text(config)
    command = page.inner_text("#command").replace("~/", f"{home}/")
    return shlex.split(command)


def test_browser_from_invitation_to_a_shell_and_a_revocation(
    appliance: ApplianceUnderTest,
    target: SSHDTarget,
    client: Client,
    person: str,
    loopback_web_server: WebUnderTest,
    chromium: Browser,
) -> None:
    web = loopback_web_server
    appliance.env["JIT_BASTION_WEB_PUBLIC_URL"] = web.url
    link = appliance.cli("user", "add", person).stdout.strip().splitlines()[-1]
    web.start(wait=False)
    appliance.start()
    web.wait()
    home = client.directory / "home"
    key = keygen((home / ".ssh").mkdir(parents=True) or home / ".ssh" / "id_ed25519")
    page = new_page(chromium)

    secret = enroll(page, link)
    log_in(page, web.url, person, secret, "03-login")
    request_access(page, key.with_suffix(".pub").read_text())
    assert "&lt;b&gt;check&lt;/b&gt;" in page.content()
    command = write_client_files(page, home, target)
    page.goto(web.url + "/mine")
    shot(page, "06-my-requests")

    result = client.host.run([*command, "echo reached $(id -un)"], timeout=30)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reached {person}"
    _admin_revokes_a_live_session(appliance, chromium, client, command, web)
    _no_secret_in(web.log.read_text(), PASSWORD, secret)


def _admin_revokes_a_live_session(
    appliance: ApplianceUnderTest,
    chromium: Browser,
    client: Client,
    command: list[str],
    web: WebUnderTest,
) -> None:
    """An admin revokes the grant in the browser; the session ends."""
    admin = enroll_person(appliance.state, "carol", time.time, role="admin")
    session = subprocess.Popen(
        client.host.command([*command, "sleep 120"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        appliance.events("tunnel.opened", wait_for=2)
        page = new_page(chromium)
        page.on("dialog", lambda dialog: dialog.accept())
        log_in(page, web.url, admin.name, admin.secret, "07-admin-login")
        for path, name in (("users", "08-users"), ("audit", "09-audit")):
            page.goto(f"{web.url}/admin/{path}")
            shot(page, name)
        page.goto(web.url + "/admin/grants")
        shot(page, "10-active-grants")
        page.fill("input[name=reason]", "incident over")
        page.click("button.danger")
        page.wait_for_selector("text=is revoked")
        shot(page, "11-revoked")
        assert session.wait(timeout=15) != 0
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert appliance.events("certificate.revoked")[0]["reason"] == "incident over"


def _no_secret_in(log: str, *secrets: str) -> None:
    for value in secrets:
        assert value not in log
