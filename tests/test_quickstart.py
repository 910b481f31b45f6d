"""`tdmpc-ray quickstart`: the tiny run is clean, states distilled vs scratch with an interval, and
its dashboard shows those scores with intervals and loss curves (headless Chromium); the teacher
is downloaded when it is not here, and a silent server is given up quickly; `--full` prints only
commands that run."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tdmpc_ray import quickstart
from tdmpc_ray.cli import build_parser, main
from tdmpc_ray.model.published import BASE_URL_ENV, CACHE_ENV, MIRROR_DIR_ENV, published
from tdmpc_ray.quickstart import FULL_PATH, PUBLISHED_TEACHER, published_teacher, teacher_lines
from tests import test_dashboard
from tests.helpers import REPO
from tests.test_dashboard import open_page

browser = test_dashboard.browser
"""The headless Chromium fixture of the dashboard's tests."""


INTERVAL = r"-?\d+\.\d+ \[-?\d+\.\d+, -?\d+\.\d+\]"
SCREENSHOT = os.environ.get("QUICKSTART_DASHBOARD_SCREENSHOT")
"""Also save the quickstart dashboard's screenshot here (docs/results/dashboard_quickstart.png)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """One tiny quickstart run (minutes) and its folder, shared by the tests of this module."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    run = subprocess.run(
        [sys.executable, "-m", "tdmpc_ray", "quickstart", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    return run, out


@pytest.mark.slow
def test_tiny_quickstart_is_clean_short_and_compares_the_students_with_an_interval(tiny):
    run, _ = tiny
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output
    assert len(output.splitlines()) <= 150, output
    assert re.search(rf"^distilled - scratch: {INTERVAL}: ", run.stdout, re.MULTILINE), run.stdout
    assert re.search(r"^teacher - students: .* vs scratch, .* vs distilled", run.stdout, re.M)


@pytest.mark.slow
def test_tiny_quickstart_dashboard_shows_its_scores_with_intervals_and_loss_curves(tiny, browser):
    run, out = tiny
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    printed = {
        name: re.search(rf"^  {name}\s+({INTERVAL})", run.stdout, re.MULTILINE).group(1)
        for name in ("teacher", "scratch", "distilled")
    }
    page, errors = open_page(browser, (out / "dashboard.html").as_uri())
    rows = page.locator("#trials tbody tr")
    assert rows.count() == 2
    text = {
        rows.nth(i).inner_text().split("\t")[2].strip(): rows.nth(i).inner_text() for i in range(2)
    }
    assert printed["scratch"] in text["scratch"] and printed["distilled"] in text["distilled"]
    assert len(re.findall(INTERVAL, text["distilled"])) >= 2  # its score, and minus scratch
    assert printed["teacher"] in page.locator("#references").inner_text()
    assert page.locator("#plot-steps g.errorbar").count() == 2
    assert page.locator("#plot-scratch g.errorbar").count() == 1
    assert page.locator("#plot-losses polyline").count() == 2
    assert page.locator("#plot-tasks rect.bar").count() == 3
    fits = page.evaluate(
        """() => {
        const table = document.querySelector("#trials");
        const card = table.parentElement.getBoundingClientRect();
        const cells = [...table.querySelectorAll("th, td")];
        return document.documentElement.scrollWidth <= window.innerWidth
          && table.getBoundingClientRect().right <= card.right
          && cells.every((c) => c.scrollWidth <= c.clientWidth);
      }"""
    )
    assert fits, "the trials table does not fit 1280 px"
    page.screenshot(path=str(out / "dashboard.png"), full_page=True)
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=True)
    assert errors == []


def test_teacher_lines_say_plainly_when_the_teacher_is_no_better() -> None:
    better = {
        "scratch": {"value": 5.0, "low": 1.0, "high": 9.0},
        "distilled": {"value": 4.0, "low": 0.5, "high": 7.5},
    }
    assert teacher_lines(better, published=False)[-1].endswith("the teacher is better than both")
    worse = {**better, "distilled": {"value": -0.8, "low": -2.0, "high": 0.4}}
    lines = teacher_lines(worse, published=False)
    assert "cannot show distillation" in lines[-1] and "tdmpc-ray download" in lines[-1]
    assert "tdmpc-ray download" not in teacher_lines(worse, published=True)[-1]
    unknown = {**better, "scratch": {"value": 1.0, "low": None, "high": None}}
    assert "cannot show distillation" in teacher_lines(unknown, published=True)[-1]


@pytest.fixture
def no_local_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No published checkpoint on this machine: empty cache and mirror folders."""
    for env, name in ((CACHE_ENV, "cache"), (MIRROR_DIR_ENV, "mirror")):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(env, str(tmp_path / name))
    return tmp_path / "cache"


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server with `handler` on a free port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_teacher_is_downloaded_when_it_is_not_here(no_local_teacher, monkeypatch):
    mirror = REPO.parent / "shared" / "checkpoints"
    entry = published(PUBLISHED_TEACHER)
    if not (mirror / entry.file).is_file():
        pytest.skip("no published checkpoint on this machine to serve")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None
    with http_server(handler) as url:
        monkeypatch.setenv(BASE_URL_ENV, url)
        path, found = published_teacher()
    assert (path, found) == (no_local_teacher / entry.file, "downloaded")


class _Silent(http.server.BaseHTTPRequestHandler):
    """Accepts a request and never answers it (a hung server)."""

    def do_GET(self) -> None:
        time.sleep(30)

    def log_message(self, *args: object) -> None:
        pass


def test_a_silent_server_is_given_up_quickly(no_local_teacher, monkeypatch):
    monkeypatch.setattr(quickstart, "DOWNLOAD_TIMEOUT_S", 0.5)
    with http_server(_Silent) as url:
        monkeypatch.setenv(BASE_URL_ENV, url)
        started = time.monotonic()
        path, why = published_teacher()
    assert path is None and "timed out" in why and time.monotonic() - started < 10
    monkeypatch.setenv(BASE_URL_ENV, "http://127.0.0.1:9")  # nothing listens: offline
    assert published_teacher()[0] is None


def test_quickstart_refuses_a_folder_that_holds_files(tmp_path, capsys, monkeypatch):
    for name in ("MUJOCO_GL", "RAY_DATA_DISABLE_PROGRESS_BARS", "RAY_DATA_LOGGING_CONFIG"):
        monkeypatch.delenv(name, raising=False)  # the verb sets them; restored after the test
    (tmp_path / "old.txt").write_text("an earlier run")
    assert main(["quickstart", "--tiny", "--out", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err


def full_path_commands() -> list[list[str]]:
    """Every `tdmpc-ray ...` command `--full` prints (also those submitted with `ray job`)."""
    commands = []
    for line in FULL_PATH.splitlines():
        if "tdmpc-ray " in line:
            commands.append(shlex.split(line[line.index("tdmpc-ray ") :])[1:])
    return commands


def test_full_prints_the_real_mt30_path_with_commands_that_parse(capsys):
    assert main(["quickstart", "--full"]) == 0
    assert capsys.readouterr().out.strip() == FULL_PATH.strip()
    commands = full_path_commands()
    verbs = [c[0] if c[0] != "data" else f"data {c[1]}" for c in commands]
    assert verbs == [
        "data convert",
        "data label",
        "sweep",
        "dashboard",
        "eval",
        "quantize",
        "sweep",
    ]
    for argv in commands:
        build_parser().parse_args(argv)  # exits (fails the test) on an invalid command
    ours = re.findall(r"\b((?:tune|cluster|docs)/[\w./-]+\.(?:yaml|md))", FULL_PATH)
    assert ours and all((REPO / path).is_file() for path in ours), ours
