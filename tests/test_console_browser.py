"""The console in a real browser: Debian's chromium + chromium-driver through selenium, headless.

Flows: sign in; an algorithm pushed with the oras SDK appears, and so does the business
package its chain assembles; an admin sets a user's password, and that user signs in with
it; an admin starts a garbage collection dry run and sees it reach done (on the registry
backend: the page's statement instead); a business developer fails to reach an admin page. With
ALGOMINT_SCREENSHOTS set, screenshots of the main pages refresh ``docs/console/`` (shown in
the README). Without chromium the test skips, except in CI (``CI`` set), where a missing browser is a failure."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import urllib.request
from pathlib import Path

import pytest

from proxy.api.state import CONFIG
from proxy.ui.sessions import COOKIE
from tests.support.auth import ADMIN, auth_env, basic, password_of  # noqa: F401 - auth_env is a fixture

# The README's screenshots: refreshed when ALGOMINT_SCREENSHOTS is set; otherwise each run
# writes them to its temporary folder, so running the tests leaves the tree as it was.
DOCS_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900")


def _browser_or_skip() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.environ.get("CI"):
        pytest.fail("chromium and chromium-driver are required in CI (.ci/run installs them)")
    pytest.skip("chromium / chromium-driver not installed")


def _driver(chromium: str, driver: str, profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


async def test_console_in_a_browser(auth_env, tmp_path, monkeypatch):
    shots = DOCS_SHOTS if os.environ.get("ALGOMINT_SCREENSHOTS") else tmp_path / "shots"
    chromium, chromedriver = _browser_or_skip()
    import oras.provider
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    client = auth_env.client
    host = f"127.0.0.1:{client.server.port}"
    # Names of this run's own: the registry backend is shared by every test module, and
    # plugin tags are immutable there.
    uid = uuid.uuid4().hex[:8]
    embedded = auth_env.app[CONFIG].storage.backend == "filesystem"
    new_password = f"cons-new-password-{uid}"
    algo, form = f"face-{uid}", f"door-form-{uid}"
    base = f"http://{host}"
    plugin = {"name": form, "version": "1.0", "kind": "file",
              "files": [{"path": "form.json", "data": base64.b64encode(b'{"site": "hq"}').decode()}]}
    resp = await client.post("/api/v1/plugins", json=plugin, headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()
    chain = {"name": "door", "match": [f"generic/{algo}"], "plugins": [f"plugins/{form}:1.0"]}
    resp = await client.post("/api/v1/chains", json=chain, headers=basic(ADMIN))
    assert resp.status == 201, await resp.text()

    monkeypatch.chdir(tmp_path)
    Path("model.onnx").write_bytes(os.urandom(50_000))
    Path("descriptor.json").write_text(json.dumps({
        "name": algo, "version": "1.0", "platform": "linux/amd64",
        "inputs": [{"name": "image", "type": "image/jpeg", "description": "a face"}],
        "outputs": [{"name": "identity", "type": "application/json", "description": "who it is"}],
        "parameters": {"threshold": 0.8}, "models": ["model.onnx"]}))

    def push() -> None:
        registry = oras.provider.Registry(host, insecure=True)
        registry.login(ADMIN, password_of(ADMIN), hostname=host, config_path=str(tmp_path / "oras.json"))
        registry.push(target=f"{host}/generic/{algo}:1.0", files=["model.onnx"],
                      manifest_config="descriptor.json:application/vnd.algomint.algorithm.config.v1+json", quiet=True)

    def browse() -> dict[str, object]:
        seen: dict[str, object] = {}
        profile = tempfile.mkdtemp(prefix="chromium-profile-")
        browser = _driver(chromium, chromedriver, profile)
        try:
            browser.implicitly_wait(5)  # elements of a page still loading

            def until(condition, timeout: float = 30) -> None:
                # htmx replaces the status block in place: a read can catch the old one.
                WebDriverWait(browser, timeout, poll_frequency=0.1,
                              ignored_exceptions=(StaleElementReferenceException,)).until(lambda b: condition(b))

            def sign_in(user: str, password: str | None = None) -> None:
                browser.get(f"{base}/ui/login")
                browser.find_element(By.ID, "username").send_keys(user)
                browser.find_element(By.ID, "password").send_keys(password or password_of(user))
                browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
                until(lambda b: "/ui/login" not in b.current_url and "Signed in as" in b.page_source)

            shots.mkdir(parents=True, exist_ok=True)
            browser.get(f"{base}/ui/login")
            browser.save_screenshot(str(shots / "sign-in.png"))
            sign_in(ADMIN)
            # Push with the oras SDK, then watch the system's page until the business package is there.
            browser.get(f"{base}/ui/systems/door")
            push()

            def package_listed(b) -> bool:
                b.refresh()  # listed among the system's packages (the jobs table names it sooner)
                return f'href="/ui/repositories/business/door/{algo}"' in b.page_source

            WebDriverWait(browser, 60, poll_frequency=0.5).until(package_listed)
            seen["system_after_push"] = browser.page_source
            browser.get(f"{base}/ui/algorithms")
            seen["algorithms"] = browser.page_source
            browser.save_screenshot(str(shots / "algorithms.png"))
            browser.find_element(By.LINK_TEXT, f"generic/{algo}").click()
            until(lambda b: b.current_url.endswith(f"/ui/repositories/generic/{algo}"))
            browser.find_element(By.LINK_TEXT, "1.0").click()
            until(lambda b: "tag=1.0" in b.current_url and "Digest" in b.page_source)
            seen["generic"] = browser.page_source
            browser.save_screenshot(str(shots / "algorithm-version.png"))
            browser.get(f"{base}/ui/systems/door")
            seen["system"] = browser.page_source
            browser.save_screenshot(str(shots / "business-system.png"))
            browser.find_element(By.LINK_TEXT, f"business/door/{algo}").click()
            until(lambda b: b.current_url.endswith(f"/ui/repositories/business/door/{algo}"))
            browser.find_element(By.LINK_TEXT, "1.0").click()
            until(lambda b: "tag=1.0" in b.current_url and "Digest" in b.page_source)
            seen["business"] = browser.page_source
            browser.save_screenshot(str(shots / "business-package.png"))
            browser.execute_script("document.getElementById('delivery').scrollIntoView()")
            browser.save_screenshot(str(shots / "business-package-delivery.png"))
            package_url = browser.current_url
            browser.get(f"{base}/ui/packages")  # the package exists now: its page was shown
            seen["packages"] = browser.page_source
            browser.get(package_url)
            # A full build started from the package page; its progress updates in place (htmx).
            Select(browser.find_element(By.ID, "license")).select_by_visible_text("full")
            browser.find_element(By.CSS_SELECTOR, "form[action='/ui/builds'] button[type=submit]").click()
            until(lambda b: b.find_element(By.ID, "build-state").text in ("succeeded", "failed"), timeout=60)
            seen["build_state"] = browser.find_element(By.ID, "build-state").text
            seen["build_url"] = browser.current_url
            browser.save_screenshot(str(shots / "full-build.png"))
            if seen["build_state"] == "succeeded":
                link = browser.find_element(By.ID, "download").get_attribute("href")
                cookie = browser.get_cookie(COOKIE)["value"]
                request = urllib.request.Request(link, headers={"Cookie": f"{COOKIE}={cookie}"})
                with urllib.request.urlopen(request, timeout=30) as archive:
                    seen["archive_sha256"] = hashlib.sha256(archive.read()).hexdigest()
                seen["archive_link"] = link
            # Edit the chain and re-assemble: the API's validation, then a new job.
            browser.get(f"{base}/ui/systems/door")
            browser.find_element(By.LINK_TEXT, "Edit this system").click()
            until(lambda b: b.current_url.endswith("/edit"))
            params = browser.find_element(By.ID, "params")
            params.clear()
            params.send_keys('{"site": "hq2"}')
            browser.find_element(By.CSS_SELECTOR, "form.stack button[type=submit]").click()
            until(lambda b: "saved." in b.page_source)
            seen["edited"] = browser.page_source
            browser.find_element(By.XPATH, "//button[starts-with(., 'Re-assemble')]").click()
            until(lambda b: "/ui/assemblies" in b.current_url)
            seen["reassembled"] = browser.page_source
            # The full build froze business/door/face-recog:1.0 and the plugin's output does not
            # depend on params: the new job writes nothing and says so.
            browser.find_elements(By.PARTIAL_LINK_TEXT, "#")[0].click()
            until(lambda b: re.search(r"/ui/assemblies/\d+$", b.current_url))
            until(lambda b: b.find_element(By.ID, "job-status").text == "succeeded")
            seen["noop_job"] = browser.page_source
            browser.get(f"{base}/ui/assemblies")
            browser.find_elements(By.PARTIAL_LINK_TEXT, "#")[-1].click()  # the first job (newest first)
            until(lambda b: re.search(r"/ui/assemblies/\d+$", b.current_url))
            seen["assembly"] = browser.page_source
            browser.save_screenshot(str(shots / "assembly.png"))
            browser.get(f"{base}/ui/admin/users")
            browser.save_screenshot(str(shots / "admin-users.png"))
            # An admin sets another user's password from the users page.
            browser.find_element(By.CSS_SELECTOR, "a[aria-label='Set the password of cons']").click()
            until(lambda b: b.current_url.split("#")[0].endswith("/ui/admin/users/cons"))
            browser.find_element(By.ID, "new_password").send_keys(new_password)
            browser.find_element(By.ID, "repeat").send_keys(new_password)
            browser.save_screenshot(str(shots / "admin-user-password.png"))
            browser.find_element(By.XPATH, "//button[.='Set the password']").click()
            until(lambda b: "Password of cons set" in b.page_source)
            seen["password_set"] = browser.page_source
            # Garbage collection: a dry run, followed live until it is done.
            browser.find_element(By.LINK_TEXT, "Storage").click()
            until(lambda b: b.current_url.endswith("/ui/admin/storage"))
            if embedded:
                browser.find_element(By.XPATH, "//button[.='Start a dry run']").click()
                until(lambda b: "/ui/admin/storage/gc/" in b.current_url)
                until(lambda b: b.find_element(By.ID, "gc-status").text in ("succeeded", "failed"), timeout=60)
                seen["gc_status"] = browser.find_element(By.ID, "gc-status").text
                seen["gc_phase"] = browser.find_element(By.ID, "gc-phase").text
                seen["gc_polling"] = browser.find_elements(By.CSS_SELECTOR, "#gc-run[hx-trigger]")
                browser.find_element(By.LINK_TEXT, "All runs").click()
                until(lambda b: b.current_url.endswith("/ui/admin/storage"))
                browser.save_screenshot(str(shots / "admin-storage.png"))  # the embedded backend's page
            seen["storage"] = browser.page_source
            # A phone: no page scrolls sideways (wide tables scroll inside); every control has a label.
            browser.set_window_size(390, 844)
            overflowing, unlabelled = [], []
            for path in ("/ui/algorithms", "/ui/packages", f"/ui/repositories/business/door/{algo}?tag=1.0",
                         "/ui/builds", "/ui/assemblies", "/ui/tokens", "/ui/account", "/ui/admin/grants",
                         "/ui/admin/subscriptions", "/ui/admin/storage", "/ui/admin/users/cons",
                         "/ui/systems/door"):
                browser.get(f"{base}{path}")
                if browser.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1"):
                    overflowing.append(path)
                unlabelled += [f"{path} {name}" for name in browser.execute_script(
                    "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]"
                    ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
                    " && !(e.tagName === 'BUTTON' && e.textContent.trim())).map(e => e.name || e.id)")]
            seen["phone_overflow"], seen["unlabelled"] = overflowing, unlabelled
            browser.save_screenshot(str(shots / "phone-business-system.png"))
            browser.set_window_size(1280, 900)
            browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
            until(lambda b: "/ui/login" in b.current_url)
            sign_in("cons", new_password)  # the password the admin set
            seen["cons_signed_in"] = browser.find_element(By.CSS_SELECTOR, "form.signout strong").text
            browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
            until(lambda b: "/ui/login" in b.current_url)
            sign_in("biz")
            browser.get(f"{base}/ui/admin/users")
            seen["biz_admin"] = browser.page_source
            seen["biz_title"] = browser.find_element(By.TAG_NAME, "h1").text
        finally:
            browser.quit()
            shutil.rmtree(profile, ignore_errors=True)
        return seen

    seen = await asyncio.to_thread(browse)
    assert f"generic/{algo}" in seen["algorithms"]
    generic = str(seen["generic"])
    assert algo in generic and "image/jpeg" in generic and f"business/door/{algo}:1.0" in generic
    assert f"business/door/{algo}" in str(seen["system"])
    business = str(seen["business"])
    assert "Provenance" in business and f"plugins/{form}@sha256:" in business and "/ui/archive/" in business
    assert f"oras pull --plain-http {host}/business/door/{algo}:1.0" in business
    assert f"business/door/{algo}" in str(seen["packages"])
    assert f"oras push --plain-http {host}/generic/" in str(seen["algorithms"])
    assert "succeeded" in str(seen["assembly"])
    assert "hq2" in str(seen["edited"]) and "Business system door saved" in str(seen["edited"])
    assert "job(s) queued" in str(seen["reassembled"])
    assert "unchanged: the tag already held exactly this package" in str(seen["noop_job"])
    chain = await (await client.get("/api/v1/chains/door", headers=basic(ADMIN))).json()
    assert chain["params"] == {"site": "hq2"}
    assert seen["phone_overflow"] == [] and seen["unlabelled"] == []
    assert seen["build_state"] == "succeeded", seen["build_url"]
    # The archive through the console link is byte for byte the API's.
    link = str(seen["archive_link"])
    api = await client.get("/api/v1/archive/" + link.split("/ui/archive/", 1)[1], headers=basic(ADMIN))
    assert api.status == 200
    assert hashlib.sha256(await api.read()).hexdigest() == seen["archive_sha256"]
    assert "Password of cons set" in str(seen["password_set"]) and new_password not in str(seen["password_set"])
    assert seen["cons_signed_in"] == "cons"
    assert (await client.get("/api/v1/whoami", headers=basic("cons", new_password))).status == 200
    assert (await client.get("/api/v1/whoami", headers=basic("cons"))).status == 401
    if embedded:
        assert (seen["gc_status"], seen["gc_phase"], seen["gc_polling"]) == ("succeeded", "done", [])
        runs = (await (await client.get("/api/v1/gc", headers=basic(ADMIN))).json())["items"]
        assert [(r["dry_run"], r["actor"]) for r in runs] == [(True, ADMIN)]
        assert "dry run" in str(seen["storage"])
    else:
        assert 'id="gc-registry"' in str(seen["storage"]) and "registry garbage-collect" in str(seen["storage"])
        assert 'action="/ui/admin/storage/gc"' not in str(seen["storage"])
    assert "Not allowed (403)" in str(seen["biz_title"])
    assert "alg" not in str(seen["biz_admin"]).split("<main", 1)[1].split("Back to the console")[0].replace(
        "algomint", "")
