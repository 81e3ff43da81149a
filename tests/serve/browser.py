"""A real headless Chromium for the page's tests, driven by Selenium through Debian's chromedriver: installed with apt
when missing (as CI on a fresh machine would), started phone-sized; and the real service as a child process."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.harness import apt_install, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ("chromium", "chromium-driver")  # Debian's; a downloaded browser cannot be fetched here
PHONE = (412, 915)  # CSS pixels: a common Android phone's viewport


def ensure_browser() -> str | None:
    """Installs Debian's chromium and chromium-driver when missing; returns None when they and Selenium are there,
    else why the browser tests cannot run."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]' (make test does)"
    return apt_install(PACKAGES, (CHROMIUM, CHROMEDRIVER))


def start_browser(profile: Path, size: tuple[int, int] = PHONE) -> Any:
    """Headless Chromium through Debian's chromedriver (never Selenium Manager, which would download one), with a
    phone's viewport of `size` CSS pixels and its own profile directory, offline apart from the pages it is sent to."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever reached, must not go to the network
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    arguments = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 f"--window-size={size[0]},{size[1]}", "--no-first-run", "--no-default-browser-check",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--disable-default-apps", "--password-store=basic",
                 # getUserMedia answered by Chromium's own test pattern, without a permission prompt: the page's live
                 # camera (a bonus in a secure context, which 127.0.0.1 is) is tested without a camera.
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")  # Chromium's sandbox refuses to run as root
    for argument in arguments:
        options.add_argument(argument)
    # Headless windows are at least 500 px wide; the emulated viewport makes the page see a phone's width.
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": size[0], "height": size[1],
                                                                          "pixelRatio": 1.0, "touch": True}})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


class PageService:
    """`edgemeta device serve` of the Omniglot preset as a real process on 127.0.0.1, its stderr (the log) in a file.
    `restart()` stops it with SIGTERM and starts it again on the same port and state."""

    def __init__(self, directory: Path, *args: str, token: str | None = None, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.directory, self.args, self.token = directory, args, token
        self.state = directory / "taught.store"
        self.log_path = directory / "service.log"
        self.env = {**{k: v for k, v in os.environ.items() if k != "EDGEMETA_TOKEN"}, "PYTHONUNBUFFERED": "1",
                    **(env or {})}
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, attempts: int = 3) -> None:
        for _ in range(attempts):
            command = [sys.executable, "-m", "edgemeta.cli", "device", "serve", "--preset", "omniglot",
                       "--port", str(self.port), "--state", self.state.name, *self.args]  # in cwd: a short path shown
            if self.token:
                command += ["--token", self.token]
            with self.log_path.open("a") as log:
                self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
                                             cwd=self.directory)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda out=self.proc.stdout, q=lines: [q.put(line) for line in out], daemon=True).start()
            try:
                line = lines.get(timeout=90)
            except queue.Empty:
                line = ""
            if re.search(rf"listening on http://\S+:{self.port}/", line):
                return
            self.proc.kill()
            self.proc.wait(timeout=30)
            if "cannot listen" not in self.log_path.read_text():  # a port taken meanwhile: another
                break
            self.port = free_port()
        raise AssertionError(f"the service did not start:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=30)

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, self.log()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text()
