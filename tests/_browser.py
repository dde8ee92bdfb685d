"""JupyterLab in Debian's chromium, for the tests that drive the lab extension in a real
browser (tests/test_jupyterlab_browser.py on a tiny lab, tests/test_readme.py on the demo).

``jupyter_lab(base, root)`` starts ``jupyter lab`` on 127.0.0.1 rooted at a lab and stops it
by PID; ``sidebar_page(url, profile)`` opens it in headless chromium with the lab sidebar
shown; ``shot(page, name)`` saves a screenshot to ``$LAB_SCREENSHOTS`` when set
(``LAB_SCREENSHOTS=docs/images`` refreshes the docs' pictures), else to a temporary folder,
so a test run leaves the repository as it was.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests._helpers import free_port, stop_process

CHROMIUM = "/usr/bin/chromium"
# As docs: no sandbox as root, and none of chromium's own calls out (this machine has no network).
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "lab-browser-token"
SHOTS = Path(tempfile.gettempdir()) / "lab-jupyterlab-screenshots"
"""Where screenshots go unless ``LAB_SCREENSHOTS`` names a folder (docs/images for the docs)."""
LABEXTENSION = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "lab-jupyterlab" / "package.json"
START_TIMEOUT_S = 40


def missing() -> str | None:
    """Why the browser tests cannot run here (None when they can): chromium absent is a
    reason to skip; playwright or the built extension absent is a broken install."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is absent: apt-get install chromium (.ci/run does)"
    return None


def playwright_api():
    """``playwright.sync_api``; missing means a broken install, not a reason to skip."""
    try:
        from playwright import sync_api
    except ImportError as exc:
        raise ImportError("playwright is missing: pip install -e '.[test]' installs it (never `playwright install`: "
                          "the test drives /usr/bin/chromium)") from exc
    return sync_api


def _start(base: Path, root: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """Start ``jupyter lab`` on a free port and wait until the lab routes answer, or the
    process exits (its port taken): ``(process, url)``."""
    port = free_port()
    with open(base / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
             "--ServerApp.open_browser=False", "--allow-root", f"--LabApp.workspaces_dir={base / 'workspaces'}",
             f"--LabApp.user_settings_dir={base / 'settings'}",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}lab/api/summary?token={TOKEN}", timeout=5) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(f"no lab/api/summary from jupyter lab within {START_TIMEOUT_S} s (is "
                                 "plugins.jupyterlab_ext enabled?): " + (base / "server.log").read_text()[-3000:])
        time.sleep(0.2)
    return proc, url


@contextlib.contextmanager
def jupyter_lab(base: Path, root: Path):
    """``jupyter lab`` on 127.0.0.1 rooted at the lab ``root``, its config, runtime,
    workspace and settings folders under ``base``: yields its URL; stopped by PID."""
    if not LABEXTENSION.exists():
        raise AssertionError(f"{LABEXTENSION} is missing: reinstall lab (pip install -e '.[test]') so its build "
                             "hook builds and installs the JupyterLab extension")
    # No "get notified about Jupyter news?" toast over the screenshots.
    settings = base / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env = {k: v for k, v in os.environ.items() if k not in ("LAB_HOME", "LAB_RUN_PID")}
    env.update(JUPYTER_CONFIG_DIR=str(base / "jupyter-config"), JUPYTER_RUNTIME_DIR=str(base / "jupyter-runtime"))
    proc, url = None, ""
    try:
        # A free port can be taken by another process before the server binds it: try another.
        for _ in range(3):
            proc, url = _start(base, root, env)
            if proc.poll() is None:
                break
        assert proc.poll() is None, (base / "server.log").read_text()[-3000:]
        yield url
    finally:
        if proc is not None:
            stop_process(proc)


@contextlib.contextmanager
def sidebar_page(url: str, profile: Path, *, wait_for: str = ".lab-model-row"):
    """A chromium page with JupyterLab loaded, the lab sidebar open and widened, once
    ``wait_for`` (a CSS selector inside it) is shown."""
    api = playwright_api()
    with api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1250})
        try:
            context.set_default_timeout(30_000)
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{url}lab?token={TOKEN}")
            tab = page.locator('.lm-TabBar-tab[data-id="lab-sidebar"]')
            tab.wait_for()
            if "lm-mod-current" not in (tab.get_attribute("class") or ""):  # a restored layout may have it open
                tab.click()
            page.locator(wait_for).first.wait_for()
            # Widen the left panel, as a user would, by dragging its split handle.
            handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first.bounding_box()
            if handle:
                y = handle["y"] + handle["height"] / 2
                page.mouse.move(handle["x"] + 1, y)
                page.mouse.down()
                page.mouse.move(handle["x"] + 160, y, steps=4)
                page.mouse.up()
            yield page
        finally:
            context.close()


def shot(page, name: str) -> Path:
    """Save a screenshot of the page as ``jupyterlab-<name>.png``: its path."""
    folder = Path(os.environ["LAB_SCREENSHOTS"]) if os.environ.get("LAB_SCREENSHOTS") else SHOTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"jupyterlab-{name}.png"
    page.screenshot(path=str(path))
    return path
