"""The web page at ``/`` in a real browser: headless Chromium from the distribution's packages, driven by Selenium
through the system chromedriver (nothing downloaded at run time), against a Serve app on 127.0.0.1 (local Ray,
tiny model, outputs in a local folder).

The render the page follows is held at a step (tests/step_holds.py) so a preview frame is on the page while it
renders, whatever the machine's speed. Every wait polls with a bound (``wait_for``). A screenshot of each state
lands in ``outputs/test-artifacts/web`` (``WAN_DIST_TEST_ARTIFACTS`` overrides it; the path is printed).
Skipped only when the Chromium binary is missing (.ci/run installs it with apt where it can).
"""

from __future__ import annotations

import json

import os
from pathlib import Path

import pytest

from browser import CHROMIUM, MISSING, chromium, severe
from serve_fixtures import served_app, settle_app, wait_for
from step_holds import HOOK
from wan_dist.config import GroupSpec
from wan_dist.serve.settings import (AuthSettings, BatchSettings, JobSettings, LimitSettings, PreviewSettings,
                                     RendererSettings, ServeSettings)


KEY = "web-key"
# tiny's HTTP sizes are its defaults.sizes (64x64 the smallest); manifest rows may use any multiple (32x32)
JOB = {"width": 64, "height": 64, "num_frames": 5, "num_inference_steps": 2, "seed": 7}
ROW = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
HOLD_STEP = 2  # the last of 2 steps: step 1's preview frame is recorded before the hold
ARTIFACTS = Path(os.environ.get("WAN_DIST_TEST_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts" / "web"))


# Skipped before any fixture starts (no Ray, no Serve) when, and only when, the browser itself is missing.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=MISSING)]


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb page screenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-web")
    settings = ServeSettings(models=("tiny",), store=str(root / "jobs.db"), output=str(root / "out"),
                             auth=AuthSettings(api_keys=(KEY,)), limits=LimitSettings(rate_per_s=1000.0, burst=1000),
                             jobs=JobSettings(poll_after_ms=200, lease_s=3.0), previews=PreviewSettings(every_s=0.2),
                             batches=BatchSettings(results_flush_rows=1),
                             renderer=RendererSettings(group=GroupSpec(step_hook=HOOK)))
    with served_app(settings) as served:
        yield served


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture
def page(app, browser, holds):
    """The page loaded without a key, then the key pasted (and submitted with Enter) and what it loads with the key
    shown; afterwards the tab forgets the key and leaves the page, and nothing is left held, queued or running."""
    from selenium.webdriver.common.keys import Keys

    browser.get(app.base_url + "/")
    assert browser.execute_script("return sessionStorage.length") == 0
    wait_for(lambda: browser.execute_script("return document.body.dataset.formReady === 'true'"), 30,
             what="the form built from /openapi.json")
    browser.find_element("id", "api-key").send_keys(KEY, Keys.ENTER)
    wait_for(lambda: "tiny" in _options(browser, "model"), 30, what="the models list")
    wait_for(lambda: browser.find_elements("css selector", "#recent-list li"), 30, what="the recent jobs")
    yield browser
    browser.execute_script("sessionStorage.clear()")  # the tab would keep the key for the next test's load
    browser.get("about:blank")
    browser.get_log("browser")  # drained: what the page logged while it was left is no test's
    settle_app(app, holds, 120)


def _options(browser, select_id: str) -> list[str]:
    return browser.execute_script(f"return [...document.getElementById('{select_id}').options].map(o => o.value)")


def _text(browser, element_id: str) -> str:
    return browser.execute_script(f"return document.getElementById('{element_id}').textContent")


def _state(browser) -> str:
    """What the page shows now (for a failed wait's message)."""
    return browser.execute_script(
        "const t = (id) => document.getElementById(id).textContent.trim();"
        "return `job ${t('job-id')}: ${t('job-status')}; batch ${t('batch-id')}: ${t('batch-status')}; `"
        " + `error: ${document.getElementById('error').hidden ? '-' : t('error')}`")


def _wait(browser, check, timeout_s: float, what: str, **options):
    """wait_for, its failure naming what the page showed then."""
    try:
        return wait_for(check, timeout_s, what=what, **options)
    except AssertionError as error:
        raise AssertionError(f"{error}; the page shows: {_state(browser)}") from None


def _severe(browser, *, allowed: tuple[str, ...] = ()) -> list[dict]:
    return severe(browser, allowed=allowed)


def _fill(browser, values: dict) -> None:
    for name, value in values.items():
        element = browser.find_element("id", f"f-{name}")
        element.clear()
        element.send_keys(str(value))


def _shot(browser, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_a_job_renders_with_previews_and_plays(app, page, holds, artifacts):
    from selenium.webdriver.common.keys import Keys

    assert page.execute_script("return sessionStorage.getItem('wan-dist.api-key')") == KEY
    assert page.execute_script("return localStorage.length") == 0 and page.get_cookies() == []  # the tab only
    unlabelled = page.execute_script("return [...document.querySelectorAll('input, select, textarea')]"
                                     ".filter(e => !e.labels.length).map(e => e.id || e.outerHTML)")
    assert unlabelled == []
    for name in ("prompt", "negative_prompt", "width", "height", "num_frames", "duration_s", "num_inference_steps",
                 "guidance_scale", "seed"):  # fields of the API's schema, each with its label
        assert page.find_elements("css selector", f"label[for='f-{name}']"), name
    assert page.find_elements("css selector", "label[for='image-file']")
    _shot(page, artifacts, "1-key-and-form")

    prompt = holds.plan("web page: a red ball bounces on grass", HOLD_STEP)
    _fill(page, {"prompt": prompt, **JOB})
    page.find_element("css selector", "#fields-more summary").click()  # the JSON box is under "More settings"
    page.find_element("id", "extra-json").send_keys('{"renditions": ["instagram_feed"]}')
    page.find_element("id", "f-seed").send_keys(Keys.ENTER)  # implicit submission: Enter in a field
    job_id = wait_for(lambda: _text(page, "job-id").strip(), 30, what="the created job on the page")
    with app.client(KEY) as api:
        created = api.get(f"/v1/jobs/{job_id}")
        assert created.status_code == 200 and created.json()["request"]["prompt"] == prompt

        holds.wait_reached(prompt, timeout_s=120)
        preview = wait_for(lambda: page.execute_script(
            "const img = document.getElementById('job-preview');"
            "return !document.getElementById('job-preview-figure').hidden && img.complete && img.naturalWidth > 0"
            " && img.src.startsWith('data:image/jpeg') && img.src"), 30, what="a preview frame while it renders")
        assert preview and _text(page, "job-status").startswith("in_progress")
        _shot(page, artifacts, "2-rendering-with-preview")
        holds.release(prompt)

        wait_for(lambda: _text(page, "job-status").startswith("completed"), 120, what="completed on the page")
        assert api.get(f"/v1/jobs/{job_id}").json()["status"] == "completed"
    wait_for(lambda: page.execute_script("return document.getElementById('job-video').readyState >= 2"), 30,
             what="the clip loaded in the <video>")
    page.execute_script("const v = document.getElementById('job-video'); v.pause(); v.currentTime = 0; v.play();")
    assert wait_for(lambda: page.execute_script(
        "const v = document.getElementById('job-video'); return !v.paused && v.currentTime > 0 && v.currentTime"),
        30, interval_s=0.05, what="the <video>'s currentTime advancing")
    # the rendition it asked for, downloadable from the page (a blob: URL the page fetched with the tab's key)
    links = wait_for(lambda: page.execute_script(
        "return [...document.querySelectorAll('#job-renditions a.rendition-link')].map(a => [a.textContent, a.href])"),
        30, what="a download link per rendition")
    assert [text for text, _ in links] == ["instagram_feed"] and links[0][1].startswith("blob:")
    assert page.execute_script("return document.querySelector('#job-renditions a').download") == "instagram_feed.mp4"
    wait_for(lambda: page.find_elements("css selector", f"#recent-list li[data-job-id='{job_id}'] video"), 30,
             what="the job in the recent list with its clip")
    _shot(page, artifacts, "3-completed-clip")
    assert _severe(page) == []


def test_a_storyboard_shows_which_window_and_shot_it_renders(app, page, holds, artifacts):
    # two shots of 0.5 s, 2 steps a window: held at step 3, the second window's (and shot's) first step
    prompt = holds.plan("web page: a kite, then the dunes", JOB["num_inference_steps"] + 1)
    _fill(page, {"prompt": prompt, **{k: v for k, v in JOB.items() if k != "num_frames"}})
    page.find_element("id", "f-num_frames").clear()  # a storyboard is as long as its shots
    page.find_element("css selector", "#fields-more summary").click()
    shots = [{"prompt": "a kite rises", "duration_s": 0.5},
             {"prompt": "dunes at dusk", "duration_s": 0.5, "transition": "crossfade"}]
    page.find_element("id", "extra-json").send_keys(json.dumps({"shots": shots}))
    page.find_element("css selector", "#job-form button[type='submit']").click()
    holds.wait_reached(prompt, timeout_s=120)
    line = wait_for(lambda: (text := _text(page, "job-window")).startswith("Window 2") and text, 30,
                    what=f"the window line while it renders ({_state(page)})")
    with app.client(KEY) as api:  # the page says what the API says
        window = api.get(f"/v1/jobs/{_text(page, 'job-id').strip()}").json()["window"]
    assert line == f"Window 2 of {window['count']}, shot 2 of 2" and window["index"] == 2
    assert page.find_element("id", "job-window").is_displayed()
    _shot(page, artifacts, "4-storyboard-window")
    holds.release(prompt)
    wait_for(lambda: _text(page, "job-status").startswith("completed"), 120, what="completed on the page")
    assert not page.find_element("id", "job-window").is_displayed()  # shown only while it renders
    assert _severe(page) == []


def test_a_batch_upload_shows_its_counts_and_grid(app, page, tmp_path, artifacts):
    from wan_dist.batch.manifest import write_manifest

    rows = [{"id": f"web-{i}", "prompt": f"a blue square slides right, take {i}", "seed": 40 + i, **ROW}
            for i in range(2)]
    manifest = write_manifest(rows, str(tmp_path / "web.parquet"))
    page.find_element("id", "manifest").send_keys(manifest)
    page.find_element("id", "submit-batch").click()
    _wait(page, lambda: _text(page, "batch-status").startswith("completed"), 300, "the batch completed on the page")
    assert [_text(page, f"batch-{name}") for name in ("done", "failed", "remaining")] == ["2", "0", "0"]
    loaded = wait_for(lambda: (ids := page.execute_script(
        "return [...document.querySelectorAll('#batch-grid li')].filter(li => {"
        " const v = li.querySelector('video'); return v && v.readyState >= 1 }).map(li => li.dataset.rowId)"
    )) and len(ids) == len(rows) and ids, 60, what="one loaded clip per row in the grid")
    assert sorted(loaded) == [row["id"] for row in rows]
    assert len(page.find_elements("css selector", "#batch-grid li")) == len(rows)
    _shot(page, artifacts, "4-batch-grid")
    assert _severe(page) == []


def test_an_api_refusal_is_shown_as_the_api_words_it(app, page, artifacts):
    body = {"prompt": "a size tiny does not render", "width": 32, "height": 32}
    with app.client(KEY) as api:
        refused = api.post("/v1/models/tiny/jobs", json=body)
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    _fill(page, body)
    page.find_element("id", "submit-job").click()
    wait_for(lambda: page.execute_script("return !document.getElementById('error').hidden"), 30,
             what="the error on the page")
    assert page.find_element("css selector", "#error .message").text == message
    _shot(page, artifacts, "5-api-error")
    assert _severe(page, allowed=("/v1/models/tiny/jobs",)) == []  # the refused POST itself is logged
