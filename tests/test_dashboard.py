"""Dashboard: the reader on real Ray Tune experiment folders, the static export, the CLI, and the
page itself in headless Chromium."""

from __future__ import annotations

import http.client
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tdmpc_ray.cli import main
from tdmpc_ray.dashboard import ResultsReader, export_html, make_server
from tdmpc_ray.dashboard.server import DashboardServer
from tdmpc_ray.tasks import MT30

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
D_COEFS = [0.0, 0.2, 0.4, 0.45]
FAILING_D_COEF = 0.2
REPORTS = 4


def make_trainable(gate: Path | None = None) -> Callable[[dict], None]:
    """A Tune function trainable reporting like the sweep runner: `REPORTS` rows of step, loss
    and updates/s, with an evaluation (normalized score and per-task scores) every second row.
    It fails after its third report when d_coef is FAILING_D_COEF, and with `gate` it waits after
    its second report until that file exists."""

    def trainable(config: dict) -> None:
        from ray import tune

        for i in range(1, REPORTS + 1):
            row = {"step": 1000 * i, "total_loss": 2.0 / i, "updates_per_s": 40.0 + i}
            if i % 2 == 0:
                scores = {
                    f"score/{task}": (10 + 3 * (k % 7)) * (1 + config["d_coef"]) * i / REPORTS
                    for k, task in enumerate(MT30)
                }
                row["normalized_score"] = sum(scores.values()) / len(scores)
                row.update(scores)
            tune.report(row)
            while gate is not None and i == 2 and not gate.exists():
                time.sleep(0.05)
            if config["d_coef"] == FAILING_D_COEF and i == 3:
                raise RuntimeError("injected failure")

    return trainable


def run_sweep(
    storage: Path,
    name: str,
    d_coefs: list[float],
    gate: Path | None = None,
    concurrent: int | None = 2,
) -> Path:
    """Run a real Ray Tune grid over d_coef into `storage/name` and return that folder (one CPU
    per trial, at most `concurrent` trials at once)."""
    from ray import tune

    tuner = tune.Tuner(
        make_trainable(gate),
        param_space={
            "d_coef": tune.grid_search(d_coefs),
            "teacher": None,
            "batch_size": 256,
            "steps": 1000 * REPORTS,
            "seed": 1,
            "model_size": 1,
        },
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
    )
    tuner.fit()
    return storage / name


@pytest.fixture(scope="module")
def sweep(ray_session: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished four-trial sweep, one of whose trials errored."""
    return run_sweep(tmp_path_factory.mktemp("ray_results"), "distill_sweep", D_COEFS)


def by_d_coef(payload: dict) -> dict[float, dict]:
    return {t["d_coef"]: t for t in payload["trials"]}


def copy_trial(sweep: Path, d_coef: float, dest: Path) -> Path:
    """Copy the folder of one trial of `sweep` (no experiment state) into `dest`."""
    trial = by_d_coef(ResultsReader(sweep).read())[d_coef]
    return Path(shutil.copytree(sweep / trial["dir"], dest / trial["dir"]))


@pytest.mark.slow
def test_reader_on_finished_sweep(sweep: Path) -> None:
    payload = ResultsReader(sweep).read()
    trials = by_d_coef(payload)
    assert payload["message"] is None and sorted(trials) == D_COEFS
    assert {d: t["status"] for d, t in trials.items()} == {
        0.0: "TERMINATED",
        0.2: "ERROR",
        0.4: "TERMINATED",
        0.45: "TERMINATED",
    }
    assert "injected failure" in trials[FAILING_D_COEF]["error"]
    assert [p[0] for p in trials[0.4]["curve"]] == [2000, 4000]
    assert trials[FAILING_D_COEF]["step"] == 3000 and len(trials[FAILING_D_COEF]["curve"]) == 1
    best = trials[0.45]
    assert payload["best"] == best["id"] and best["best_score"] == best["latest_score"]
    assert best["eval_step"] == 4000 and best["updates_per_s"] == 44.0
    assert set(best["tasks"]) == set(MT30)
    assert payload["varying"] == ["d_coef"] and payload["shared"]["batch_size"] == 256


@pytest.mark.slow
def test_status_inferred_without_experiment_state(sweep: Path, tmp_path: Path) -> None:
    for d_coef in (0.4, FAILING_D_COEF):
        copy_trial(sweep, d_coef, tmp_path)
    statuses = {d: t["status"] for d, t in by_d_coef(ResultsReader(tmp_path).read()).items()}
    assert statuses == {0.4: "RUNNING", FAILING_D_COEF: "ERROR"}


@pytest.mark.slow
def test_reader_tolerates_files_caught_mid_copy(sweep: Path, tmp_path: Path) -> None:
    trial_dir = copy_trial(sweep, 0.4, tmp_path)
    result = trial_dir / "result.json"
    lines = result.read_text().splitlines(keepends=True)
    (trial_dir / "params.json").write_text('{"d_coef": 0.4, "batch')
    result.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    reader = ResultsReader(tmp_path)
    (trial,) = reader.read()["trials"]
    assert trial["step"] == 3000 and trial["latest_score"] is not None
    assert trial["config"]["d_coef"] == 0.4 and trial["config"]["batch_size"] == 256

    result.write_text("".join(lines))
    assert reader.read()["trials"][0]["step"] == 4000
    result.write_text(lines[0][:10])
    assert reader.read()["trials"][0]["step"] == 4000


@pytest.mark.slow
def test_missing_empty_and_parent_folders_explain_themselves(sweep: Path, tmp_path: Path) -> None:
    missing = ResultsReader(tmp_path / "nope").read()
    assert missing["trials"] == [] and "No results folder" in missing["message"]
    assert "No trials" in ResultsReader(tmp_path).read()["message"]
    assert sweep.name in ResultsReader(sweep.parent).read()["message"]
    (tmp_path / "file").write_text("x")
    assert "is a file" in ResultsReader(tmp_path / "file").read()["message"]


@pytest.mark.slow
def test_reader_follows_a_running_sweep(
    ray_session: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    gate = tmp_path / "gate"
    live = [0.0, 0.4, 0.45]  # two run on the session's two CPUs, the third waits
    runner = threading.Thread(target=run_sweep, args=(tmp_path, "live", live, gate, None))
    runner.start()
    reader = ResultsReader(tmp_path / "live")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = [(t["status"], t["step"], t["dir"] is None) for t in reader.read()["trials"]]
            if len(rows) == len(live) and rows[0][1] == rows[1][1] == 2000:
                break
            time.sleep(0.2)
        assert rows == [("RUNNING", 2000, False)] * 2 + [("PENDING", None, True)]
    finally:
        gate.touch()
        runner.join(timeout=60)
    trials = reader.read()["trials"]
    assert [(t["status"], t["step"]) for t in trials] == [("TERMINATED", 4000)] * len(live)


@pytest.mark.slow
def test_export_is_self_contained(
    sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report.html"
    assert main(["dashboard", str(sweep), "--export", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    html = out.read_text()
    assert set(re.findall(r"https?://[^\s\"'<>)]+", html)) <= {SVG_NAMESPACE}
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "window.DASHBOARD_DATA" in html and "injected failure" in html
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]

    assert main(["dashboard", str(tmp_path / "nope"), "--export", str(out)]) == 2
    assert "no such results folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="No trials"):
        export_html(tmp_path, tmp_path / "empty.html")


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with make_server(tmp_path, port=0) as server:
        with pytest.raises(ValueError, match="in use"):
            make_server(tmp_path, port=server.server_address[1])


def test_server_answers_only_requests_addressed_to_localhost(tmp_path: Path) -> None:
    with make_server(tmp_path, port=0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            statuses = {}
            for host in ("127.0.0.1", "localhost", "attacker.example"):
                conn = http.client.HTTPConnection(*server.server_address, timeout=10)
                conn.request("GET", "/api/results", headers={"Host": f"{host}:8050"})
                statuses[host] = conn.getresponse().status
                conn.close()
        finally:
            server.shutdown()
    assert statuses == {"127.0.0.1": 200, "localhost": 200, "attacker.example": 403}


@pytest.fixture
def serve() -> Iterator[Callable[[Path], str]]:
    """`serve(folder)` starts a dashboard on a free localhost port and returns its URL."""
    servers: list[DashboardServer] = []

    def start(folder: Path) -> str:
        server = make_server(folder, port=0, refresh_s=0.5)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: object, url: str) -> tuple[object, list[str]]:
    """A new page at `url` and the list that collects its console errors and uncaught ones."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    return page, errors


@pytest.mark.slow
def test_page_in_headless_chromium(
    browser: object, serve: Callable[[Path], str], sweep: Path, tmp_path: Path
) -> None:
    polls = []
    page, errors = open_page(browser, "about:blank")
    page.on("request", lambda req: polls.append(req.url) if "/api/results" in req.url else None)
    page.goto(serve(sweep))
    rows = page.locator("#trials tbody tr")
    rows.nth(len(D_COEFS) - 1).wait_for()
    assert rows.count() == len(D_COEFS)
    assert page.locator("#plot-dcoef circle").count() == len(D_COEFS)
    assert page.locator("#plot-dcoef polyline").count() == 1
    assert page.locator("#plot-steps polyline").count() == len(D_COEFS) - 1
    assert page.locator("#plot-tasks rect.bar").count() == len(MT30)
    assert "0.45" in page.locator("#best").inner_text()
    assert "ERROR" in rows.nth(1).inner_text()

    first = rows.first
    first.click()
    assert "selected" in first.get_attribute("class")
    assert "d_coef 0)" in page.locator("#tasks-caption").inner_text()
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    page.wait_for_timeout(1200)
    assert len(polls) >= 2 and rows.count() == len(D_COEFS)
    assert errors == []


def test_page_explains_a_missing_folder(
    browser: object, serve: Callable[[Path], str], tmp_path: Path
) -> None:
    page, errors = open_page(browser, serve(tmp_path / "not_yet"))
    message = page.locator("#message")
    message.wait_for()
    assert "No results folder" in message.inner_text()
    assert page.locator("#content").is_hidden() and errors == []


@pytest.mark.slow
def test_exported_page_renders_offline(browser: object, sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    export_html(sweep, out)
    page, errors = open_page(browser, out.as_uri())
    assert page.locator("#trials tbody tr").count() == len(D_COEFS)
    assert page.locator("#plot-steps polyline").count() == len(D_COEFS) - 1
    assert "Static snapshot" in page.locator("#freshness").inner_text() and errors == []
    assert page.evaluate("window.DASHBOARD_DATA.best")
