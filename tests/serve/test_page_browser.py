"""The board's page in a real headless Chromium (Debian's, through Selenium and Debian's chromedriver) against the real
service as a process: sign-in with the token (a wrong one refused where the user sees it), teach three classes from
image files through the file input, recognise, rename, forget, reload, restart the service; the page without a token;
the board camera's panel on the folder camera; and screenshots of the main screens."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.runtime.test_camera import drawing, save
from tests.serve import browser as browser_helper
from tests.serve.browser import PageService

pytestmark = pytest.mark.slow  # a browser and a few service starts: ~10 s a test
TOKEN = "page-test-token-0123456789abcdef"
KINDS = ("circle", "cross", "zigzag")


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    reason = browser_helper.ensure_browser()
    if reason:
        pytest.skip(reason)
    chrome = browser_helper.start_browser(tmp_path_factory.mktemp("chromium") / "profile")
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> dict[str, list[Path]]:
    """Omniglot-like drawings as PNG files: per kind, variants 0-2 to teach and variant 9 (index 3) to recognise."""
    folder = tmp_path_factory.mktemp("drawings")
    return {kind: [save(drawing(kind, v), folder / f"{kind}-{v}.png") for v in (0, 1, 2, 9)] for kind in KINDS}


# -- what a user does on the page ----------------------------------------------------------------------------------
def wait_for(driver, condition, timeout: float = 20, message: str = "") -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))
    except Exception as e:
        raise AssertionError(f"{message or condition}: {e!r}\npage messages: {messages(driver)}") from e


def by_id(driver, name: str):
    return driver.find_element("id", name)


def messages(driver) -> dict[str, str]:
    return driver.execute_script("""const out = {};
        for (const n of document.querySelectorAll('.message, #board-line')) out[n.id] = n.textContent; return out;""")


def shown(driver, name: str) -> bool:
    return by_id(driver, name).is_displayed()


def sign_in(driver, token: str) -> None:
    wait_for(driver, lambda d: shown(d, "login"), message="the sign-in form")
    field = by_id(driver, "token")
    field.clear()
    field.send_keys(token)
    by_id(driver, "login-submit").click()


def classes(driver) -> dict[str, str]:
    """The class list as the page shows it: label -> its line of shots and last use."""
    return driver.execute_script("""const out = {};
        for (const li of document.querySelectorAll('#class-list .class-item'))
            out[li.dataset.label] = li.querySelector('.class-meta').textContent;
        return out;""")


def wait_classes(driver, labels: list[str]) -> dict[str, str]:
    wait_for(driver, lambda d: shown(d, "app") and sorted(classes(d)) == sorted(labels),
             message=f"the classes {labels}")
    return classes(driver)


def teach(driver, label: str, files: list[Path]) -> None:
    wait_for(driver, lambda d: shown(d, "teach-label"), message="the teach form")
    field = by_id(driver, "teach-label")
    field.clear()
    field.send_keys(label)
    by_id(driver, "teach-files").send_keys("\n".join(str(f) for f in files))  # the file input, several files at once
    wait_for(driver, lambda d: len(d.find_elements("css selector", "#teach-pending li")) == len(files))
    by_id(driver, "teach-submit").click()
    wait_for(driver, lambda d: f"Taught “{label}”" in by_id(d, "teach-message").text, message=f"teaching {label}")


def recognise(driver, file: Path) -> dict[str, str]:
    driver.execute_script("document.getElementById('recognise-answer').textContent = ''")
    by_id(driver, "recognise-file").send_keys(str(file))
    wait_for(driver, lambda d: by_id(d, "recognise-answer").text or "error" in by_id(d, "recognise-message")
             .get_attribute("class"), message=f"recognising {file.name}")
    return {name: by_id(driver, f"recognise-{name}").text for name in ("answer", "nearest", "sure")}


def class_item(driver, label: str):
    for item in driver.find_elements("css selector", "#class-list .class-item"):
        if item.get_attribute("data-label") == label:
            return item
    raise AssertionError(f"no class item {label!r} in {classes(driver)}")


def rename(driver, label: str, to: str) -> None:
    item = class_item(driver, label)
    item.find_element("css selector", "button.rename").click()
    field = item.find_element("css selector", ".rename-form input")
    field.clear()
    field.send_keys(to)
    item.find_element("css selector", ".rename-form button[type=submit]").click()
    wait_for(driver, lambda d: to in classes(d) and label not in classes(d), message=f"renaming {label}")


def forget(driver, label: str) -> None:
    item = class_item(driver, label)
    item.find_element("css selector", "button.forget").click()
    confirm = item.find_element("css selector", ".forget-confirm")
    assert confirm.is_displayed() and label in confirm.text and label in classes(driver)  # nothing forgotten yet
    confirm.find_element("css selector", "button.confirm-forget").click()
    wait_for(driver, lambda d: label not in classes(d), message=f"forgetting {label}")


def thumbnails_loaded(driver) -> list[int]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#class-list img.thumb')).map(i => i.complete ? i.naturalWidth : -1)")


# -- tests ---------------------------------------------------------------------------------------------------------
def test_sign_in_teach_recognise_rename_forget_reload_and_restart(driver, drawings, tmp_path):
    service = PageService(tmp_path, token=TOKEN)
    try:
        driver.get(service.url)
        assert "edgemeta" in driver.title
        # A wrong token: refused where the user sees it, and the page stays on the sign-in form.
        sign_in(driver, "not-the-token-at-all-0000")
        wait_for(driver, lambda d: "That token is wrong" in by_id(d, "login-message").text, message="the refusal")
        assert shown(driver, "login-message") and not shown(driver, "app")
        sign_in(driver, TOKEN)
        wait_for(driver, lambda d: shown(d, "app") and not shown(d, "login"), message="the signed-in page")
        [cookie] = [c for c in driver.get_cookies() if c["name"] == "edgemeta_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert by_id(driver, "token").get_attribute("value") == ""  # not kept in the page either

        for kind in KINDS:
            teach(driver, kind, drawings[kind][:3])
        shown_classes = wait_classes(driver, list(KINDS))
        assert all(line.startswith("3 shots") for line in shown_classes.values()), shown_classes
        wait_for(driver, lambda d: len(thumbnails_loaded(d)) == 3 and min(thumbnails_loaded(d)) > 0,
                 message="the classes' thumbnails")
        for kind in KINDS:  # a drawing it was not taught with
            answer = recognise(driver, drawings[kind][3])
            assert answer["answer"] == kind and answer["nearest"] == f"Nearest class: {kind}", answer
            # A calibrated probability, never shown as certainty ("100 %").
            assert re.fullmatch(r"How sure it knows this: (over 99|under 1|[1-9]?[0-9]) %", answer["sure"]), answer

        rename(driver, "cross", "X mark")
        forget(driver, "zigzag")
        assert wait_classes(driver, ["circle", "X mark"])["X mark"].startswith("3 shots")
        assert recognise(driver, drawings["cross"][3])["answer"] == "X mark"

        driver.refresh()  # the session cookie holds: no sign-in
        assert wait_classes(driver, ["circle", "X mark"]) and not shown(driver, "login")

        service.restart()  # SIGTERM, then the same state and port; sessions are in memory, so sign in again
        driver.refresh()
        sign_in(driver, TOKEN)
        after = wait_classes(driver, ["circle", "X mark"])
        assert all(line.startswith("3 shots") for line in after.values()), after
        assert recognise(driver, drawings["circle"][3])["answer"] == "circle"
        assert TOKEN not in driver.current_url
    finally:
        code = service.stop()
    log = service.log()
    assert code == 0, log
    assert TOKEN not in log and '"POST /session" 401' in log and '"POST /session" 204' in log, log
    assert '"POST /enroll" 200' in log and '"POST /rename" 200' in log and '"POST /forget" 200' in log, log


def test_without_a_token_the_page_needs_no_sign_in_and_shows_the_board_camera(driver, drawings, tmp_path):
    camera = tmp_path / "camera"
    camera.mkdir()

    def show(kind: str, variants) -> None:  # what the folder camera sees
        for old in camera.iterdir():
            old.unlink()
        for v in variants:
            save(drawing(kind, v), camera / f"{kind}-{v}.png")

    show("circle", range(3))
    service = PageService(tmp_path, "--camera", str(camera))
    try:
        driver.delete_all_cookies()
        driver.get(service.url)
        wait_for(driver, lambda d: shown(d, "app") and shown(d, "camera"), message="the page with its camera panel")
        assert not shown(driver, "login") and not shown(driver, "logout")
        wait_for(driver, lambda d: d.execute_script(
            "const i = document.getElementById('camera-preview'); return i.complete && i.naturalWidth > 0"),
                 message="the camera's preview")
        assert by_id(driver, "camera-name").text == f"Camera: folder:{camera} (3 images)"
        for kind in ("circle", "cross"):
            show(kind, range(3))
            by_id(driver, "camera-label").clear()
            by_id(driver, "camera-label").send_keys(kind)
            by_id(driver, "camera-frames").clear()
            by_id(driver, "camera-frames").send_keys("3")
            by_id(driver, "camera-seconds").clear()
            by_id(driver, "camera-seconds").send_keys("0")
            by_id(driver, "camera-teach").click()
            taught = f"Taught “{kind}” from the board's camera: 3 shots"
            wait_for(driver, lambda d, t=taught: t in by_id(d, "camera-message").text, message=f"teaching {kind} from the camera")
        assert sorted(wait_classes(driver, ["circle", "cross"])) == ["circle", "cross"]
        show("cross", [9])
        by_id(driver, "camera-live").click()
        wait_for(driver, lambda d: by_id(d, "camera-result").text.startswith("cross"), message="live recognition")
        show("circle", [9])
        wait_for(driver, lambda d: by_id(d, "camera-result").text.startswith("circle"), message="live recognition")
        by_id(driver, "camera-live").click()  # stop
        assert by_id(driver, "camera-live").get_attribute("aria-pressed") == "false"
        # A phone's photo (4000x3000, ~4 MB) is downsized in the browser before it is sent.
        big = tmp_path / "phone-photo.jpg"
        big.write_bytes(phone_photo())
        teach(driver, "photo", [big])
        sent = re.search(r"\(1 added, (\d+) KB sent\)", by_id(driver, "teach-message").text)
        assert sent and int(sent.group(1)) < 400 < big.stat().st_size / 1024, by_id(driver, "teach-message").text
        print(f"a {big.stat().st_size / 1e6:.1f} MB photo was sent as {sent.group(1)} KB")
        # The live camera of the device the page is on (Chromium's fake camera): a frame added, then taught.
        assert driver.execute_script("return window.isSecureContext") and shown(driver, "live-start")
        by_id(driver, "live-start").click()
        wait_for(driver, lambda d: d.execute_script("return document.getElementById('live-video').videoWidth") > 0,
                 message="the live camera's video")
        by_id(driver, "live-snap").click()
        wait_for(driver, lambda d: len(d.find_elements("css selector", "#teach-pending li")) == 1, message="a frame")
        by_id(driver, "live-stop").click()
        assert not shown(driver, "live")
        by_id(driver, "teach-label").clear()
        by_id(driver, "teach-label").send_keys("live frame")
        by_id(driver, "teach-submit").click()
        wait_for(driver, lambda d: "Taught “live frame”: 1 shot now (1 added" in by_id(d, "teach-message").text,
                 message="teaching a live frame")
        assert sorted(classes(driver)) == ["circle", "cross", "live frame", "photo"]
    finally:
        assert service.stop() == 0, service.log()


def card_screenshot(driver, name: str, path: Path) -> None:
    """A PNG of one section of the page, scrolled to the top of the viewport first (a screenshot holds what is seen)."""
    driver.execute_script(f"document.getElementById('{name}').scrollIntoView({{block: 'start'}})")
    time.sleep(0.1)  # the scroll painted
    by_id(driver, name).screenshot(str(path))


def phone_photo() -> bytes:
    from tests.serve.test_page_memory import photo

    return photo(0)


def _nontrivial_png(path: Path) -> tuple[int, int]:
    image = Image.open(path)
    assert image.format == "PNG"
    width, height = image.size
    colours = np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    assert width >= 300 and height >= 150 and len(colours) >= 16 and path.stat().st_size > 4000, (path, image.size,
                                                                                                     len(colours))
    return width, height


def test_screenshots_of_the_main_screens(driver, drawings, tmp_path):
    """Saves login, classes, recognise and status PNGs: to $EDGEMETA_SCREENSHOTS (docs/screenshots for the docs) when
    set, else into tmp; each must be a real picture of the page."""
    out = Path(os.environ.get("EDGEMETA_SCREENSHOTS") or tmp_path / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    service = PageService(tmp_path, "--memory-budget", "96MB", token=TOKEN)
    try:
        driver.delete_all_cookies()
        driver.get(service.url)
        wait_for(driver, lambda d: shown(d, "login"), message="the sign-in form")
        by_id(driver, "token").send_keys("x" * len(TOKEN))  # the form as a user fills it
        driver.save_screenshot(str(out / "login.png"))
        sign_in(driver, TOKEN)
        wait_for(driver, lambda d: shown(d, "app"), message="the signed-in page")
        for kind in KINDS:
            teach(driver, kind, drawings[kind][:3])
        wait_classes(driver, list(KINDS))
        wait_for(driver, lambda d: len(thumbnails_loaded(d)) == 3 and min(thumbnails_loaded(d)) > 0)
        card_screenshot(driver, "classes", out / "classes.png")
        assert recognise(driver, drawings["zigzag"][3])["answer"] == "zigzag"
        card_screenshot(driver, "recognise", out / "recognise.png")
        by_id(driver, "status-refresh").click()
        wait_for(driver, lambda d: " of " in by_id(d, "status-memory").text and by_id(d, "status-fit").text.endswith("classes"))
        card_screenshot(driver, "status", out / "status.png")
    finally:
        assert service.stop() == 0, service.log()
    sizes = {name: _nontrivial_png(out / f"{name}.png") for name in ("login", "classes", "recognise", "status")}
    print({name: f"{w}x{h}" for name, (w, h) in sizes.items()}, "in", out)
