"""Drive headless Chromium from tests, with no Python dependency: Chromium's own ``--dump-dom`` and
``--screenshot`` switches.

* :func:`evaluate`: load a local HTML page and return the JSON value of a JavaScript expression
  evaluated in it after its load event (images loaded and decoded).
* :func:`screenshot`: a PNG of a local HTML page at a given window size.

How :func:`evaluate` works: a wrapper page, written into a temporary folder, loads the page under
test in an iframe; when the frame has loaded, a script of the wrapper evaluates the expression
against the frame's ``document`` and ``window`` and writes the JSON result into the wrapper's DOM,
which ``--dump-dom`` prints. ``--allow-file-access-from-files`` lets the file:// wrapper read the
file:// frame. The page under test carries no test code.

Chromium is the Debian package ``chromium`` (``/usr/bin/chromium``); ``$BRAINSEG_CHROMIUM`` names
another binary. Without it :func:`find_chromium` raises :class:`ChromiumNotFound`, which fails the
test with the command that installs it.
"""
import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List

__all__ = ["ChromiumNotFound", "find_chromium", "evaluate", "screenshot"]

CHROMIUM_ENV = "BRAINSEG_CHROMIUM"
INSTALL_HINT = "install it with `apt-get install -y chromium` (Debian/Ubuntu, as root) or `make browser`"
RESULT_ID = "brainseg-browser-result"
WRAPPER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head><body>
<pre id="{result_id}">no result: the page under test did not load</pre>
<script>
function check(frame) {{
  var out = document.getElementById("{result_id}");
  try {{
    if (!frame.contentDocument) throw new Error("the frame's document is not readable");
    var value = new Function("document", "window", "return (" + {expression} + ");")(
      frame.contentDocument, frame.contentWindow);
    out.textContent = JSON.stringify({{ok: true, value: value}});
  }} catch (error) {{
    out.textContent = JSON.stringify({{ok: false, error: String(error)}});
  }}
}}
</script>
<iframe src="{url}" width="{width}" height="{height}" onload="check(this)"></iframe>
</body></html>
"""


class ChromiumNotFound(RuntimeError):
    """No headless Chromium on this machine."""


def find_chromium() -> str:
    """Path of the Chromium binary: ``$BRAINSEG_CHROMIUM``, else ``chromium`` on the PATH.

    Raises:
        ChromiumNotFound: with the command that installs it.
    """
    name = os.environ.get(CHROMIUM_ENV) or "chromium"
    path = shutil.which(name)
    if path is None:
        raise ChromiumNotFound(f"headless Chromium ({name!r}) not found: {INSTALL_HINT}")
    return path


def _run(args: List[str], timeout: float) -> str:
    """Run Chromium headless with a throw-away profile; return its stdout.

    Chromium and its helper processes run in their own process group, killed on timeout.
    """
    with tempfile.TemporaryDirectory(prefix="brainseg-chromium-") as profile:
        command = [find_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                   "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise RuntimeError(f"Chromium did not finish within {timeout:.0f} s: {' '.join(command)}") from None
    if process.returncode != 0:
        tail = "\n".join(stderr.splitlines()[-10:])
        raise RuntimeError(f"Chromium exited with code {process.returncode}: {' '.join(command)}\n{tail}")
    return stdout


def evaluate(page: Path, expression: str, *, width: int = 1200, height: int = 800, timeout: float = 60) -> Any:
    """Load ``page`` in headless Chromium and evaluate ``expression`` in it once it has loaded.

    Args:
        page: a local HTML file.
        expression: a JavaScript expression over the page's ``document`` and ``window``, with a
            JSON-serialisable value.
        width, height: size of the frame the page is laid out in, in CSS pixels.
        timeout: seconds before Chromium is killed.

    Returns:
        The expression's value, decoded from JSON.

    Raises:
        RuntimeError: Chromium failed, or the expression raised in the page.
    """
    literal = json.dumps(expression).replace("</", "<\\/")  # a JS string literal that cannot end the script
    wrapper = WRAPPER.format(result_id=RESULT_ID, expression=literal, url=html.escape(Path(page).resolve().as_uri()),
                             width=width, height=height)
    with tempfile.TemporaryDirectory(prefix="brainseg-wrapper-") as folder:
        wrapper_path = Path(folder) / "wrapper.html"
        wrapper_path.write_text(wrapper, encoding="utf-8")
        dom = _run(["--allow-file-access-from-files", "--dump-dom", wrapper_path.as_uri()], timeout)
    match = re.search(f'<pre id="{RESULT_ID}">(.*?)</pre>', dom, re.DOTALL)
    if match is None:
        raise RuntimeError(f"Chromium's DOM of the wrapper page has no result element:\n{dom[:500]}")
    text = html.unescape(match.group(1))
    try:
        result = json.loads(text)
    except json.JSONDecodeError:
        raise RuntimeError(f"no result from the page {page}: {text}") from None
    if not result["ok"]:
        raise RuntimeError(f"the expression failed in {page}: {result['error']}")
    return result["value"]


def screenshot(page: Path, out: Path, *, width: int = 1200, height: int = 3000, timeout: float = 60) -> Path:
    """Write a PNG of ``page`` rendered in a ``width`` × ``height`` window (CSS pixels) to ``out``.

    Returns:
        Path: ``out``.

    Raises:
        RuntimeError: Chromium failed or wrote no file.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    _run([f"--screenshot={out}", f"--window-size={width},{height}", Path(page).resolve().as_uri()], timeout)
    if not out.is_file():
        raise RuntimeError(f"Chromium wrote no screenshot to {out}")
    return out
