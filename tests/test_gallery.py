"""The gallery of a batch output (wan_dist/batch/gallery.py): written by every batch run and by `wan-dist gallery`,
on a local folder and on S3 (moto), read back as a browser would: the HTML parsed, its thumbnails decoded and
compared with the clips, its links followed."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from browser import CHROMIUM, MISSING, chromium, severe
from wan_dist.batch.manifest import write_manifest
from wan_dist.batch.results import latest_results
from wan_dist.batch.runner import BatchRunner
from wan_dist.config import BatchConfig, GroupSpec, OutputConfig
from wan_dist.storage.objects import delete, exists, read_bytes
from wan_dist.video.mp4 import decode_mp4, encode_mp4, sample_frames

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FAST = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
ROWS = [{"id": "boat", "prompt": "a paper boat on a lake", "seed": 1, **FAST},
        {"id": "fox", "prompt": "a red fox in the snow", "seed": 2, "output_prefix": "animals/winter", **FAST},
        {"id": "bad-frames", "prompt": "a lighthouse with six frames", **{**FAST, "num_frames": 6}}]
CLIPS = {"boat": "boat", "fox": "animals/winter/fox"}  # row id -> its folder under the output


class Page(HTMLParser):
    """What a reader of gallery.html sees: the rows (attributes, thumbnail, texts, links) and the filters."""

    def __init__(self, text: str):
        super().__init__()
        self.rows: list[dict] = []
        self.selects: dict[str, list[str]] = {}
        self.inputs: list[str] = []
        self.scripts = 0
        self._select = None
        self._text_of: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "article" and "row" in classes:
            self.rows.append({"attrs": attrs, "thumbs": [], "texts": {}, "links": {}})
        elif tag == "img" and "thumb" in classes:
            self.rows[-1]["thumbs"].append(attrs)
        elif tag == "a" and self.rows:
            self.rows[-1]["links"][classes[0]] = attrs["href"]
        elif tag == "select":
            self._select = attrs["id"]
            self.selects[self._select] = []
        elif tag == "option" and self._select:
            self.selects[self._select].append(attrs["value"])
        elif tag == "input":
            self.inputs.append(attrs.get("id"))
        elif tag == "script":
            self.scripts += 1
        if tag in ("div", "p") and classes and classes[0] in ("no-clip", "error", "prompt"):
            self._text_of = classes[0]

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None
        if tag in ("div", "p"):
            self._text_of = None

    def handle_data(self, data):
        if self._text_of and self.rows:
            texts = self.rows[-1]["texts"]
            texts[self._text_of] = texts.get(self._text_of, "") + data

    def row(self, row_id: str) -> dict:
        [found] = [r for r in self.rows if r["attrs"]["data-id"] == row_id]
        return found


def _thumbnail_frames(src: str) -> list[np.ndarray]:
    from PIL import Image

    assert src.startswith("data:image/webp;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    frames = []
    for index in range(getattr(image, "n_frames", 1)):
        image.seek(index)
        frames.append(np.asarray(image.convert("RGB")))
    return frames


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _cli(*args: str, cwd: Path, env: dict | None = None, module: str = "wan_dist.cli.main"):
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")}
    path = os.pathsep.join(p for p in (str(REPO), clean.get("PYTHONPATH")) if p)
    env = {**clean, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "WAN_DIST_CACHE": str(cwd / "cache"), "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_sample_frames_picks_evenly_spread_frames_scaled_down_never_up():
    frames = np.zeros((17, 48, 80, 3), np.uint8)
    for index in range(17):
        frames[index, :, : 4 * index + 8] = 255  # a white band that widens frame by frame: each frame is known
    clip = encode_mp4(frames, 16, crf=0, preset="ultrafast")
    decoded, _ = decode_mp4(clip)
    picked, fps = sample_frames(clip, 5)
    assert fps == 16 and picked.shape == (5, 48, 80, 3)
    assert np.array_equal(picked, decoded[[0, 4, 8, 12, 16]])  # first and last included
    small, _ = sample_frames(clip, 3, max_side=40)
    assert small.shape == (3, 24, 40, 3)  # aspect kept
    assert small[1, :, :18].mean() > 245 and small[1, :, 22:].mean() < 8  # frame 8: a band 40 of 80 wide, halved
    assert sample_frames(clip, 30, max_side=500)[0].shape == (17, 48, 80, 3)  # each frame once, never enlarged


@pytest.fixture(scope="module")
def batch_output(ray_local, tmp_path_factory):
    """A batch of two rows that render and one that fails, run into a local folder (its gallery written at the end)."""
    folder = tmp_path_factory.mktemp("gallery")
    write_manifest(ROWS, str(folder / "m.parquet"))
    out = folder / "out"
    config = BatchConfig(manifest=str(folder / "m.parquet"), groups=1, group=GroupSpec(cpus_per_rank=0.5),
                         retry_backoff_s=0.1, progress_interval_s=0.5)
    summary = BatchRunner(config, OutputConfig(uri=str(out))).run()
    assert (summary["completed"], summary["failed"]) == (2, 1), summary
    return out, summary


def test_a_batch_leaves_a_gallery_of_its_rows_with_thumbnails_reasons_links_and_filters(batch_output):
    out, summary = batch_output
    assert summary["gallery_uri"] == str(out / "gallery.html")
    page = Page((out / "gallery.html").read_text(encoding="utf-8"))
    assert [r["attrs"]["data-id"] for r in page.rows] == ["boat", "fox", "bad-frames"]  # manifest order

    clips = {row_id: decode_mp4((out / folder / "clip.mp4").read_bytes())[0] for row_id, folder in CLIPS.items()}
    for row_id, folder in CLIPS.items():
        row = page.row(row_id)
        assert row["attrs"]["data-status"] == "completed" and row["attrs"]["data-model"] == "tiny"
        assert row["texts"]["prompt"] == next(r["prompt"] for r in ROWS if r["id"] == row_id)
        # the links resolve, relative to the page, to the row's clip and sidecar
        assert (out / row["links"]["clip-link"]).resolve() == (out / folder / "clip.mp4").resolve()
        assert (out / row["links"]["sidecar-link"]).resolve() == (out / folder / "clip.json").resolve()
        sidecar = json.loads((out / row["links"]["sidecar-link"]).read_text())
        assert sidecar["request"]["name"] == row_id
        # one thumbnail: an animated image of this clip's frames (the first and the last among them)
        [thumb] = row["thumbs"]
        frames = _thumbnail_frames(thumb["src"])
        assert len(frames) == 5 and frames[0].shape == (32, 32, 3)  # a 5-frame clip: each of its frames once
        assert (int(thumb["width"]), int(thumb["height"])) == (32, 32)
        clip = clips[row_id]
        assert all(_psnr(frame, clip[index]) >= 25 for index, frame in enumerate(frames))  # in order
        other = clips["fox" if row_id == "boat" else "boat"]
        assert _psnr(frames[0], clip[0]) > _psnr(frames[0], other[0]) + 3  # its own clip, not another row's

    failed = page.row("bad-frames")
    assert failed["attrs"]["data-status"] == "failed" and failed["thumbs"] == [] and failed["links"] == {}
    assert "must be 4k+1" in failed["texts"]["no-clip"] and "must be 4k+1" in failed["texts"]["error"]
    assert "[num_frames]" in failed["texts"]["error"]
    assert failed["texts"]["prompt"] == "a lighthouse with six frames"  # from the manifest: it has no sidecar
    assert failed["attrs"]["data-model"] == "tiny"  # the manifest's model (the results record "?")

    assert set(page.selects["filter-status"]) == {"", "completed", "failed"}
    assert set(page.selects["filter-model"]) == {"", "tiny"}
    assert "filter-text" in page.inputs and page.scripts == 1
    html = (out / "gallery.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_wan_dist_gallery_rewrites_it_and_writes_a_runs_own_beside_its_results(batch_output, tmp_path):
    out, summary = batch_output
    before = Page((out / "gallery.html").read_text())
    (out / "gallery.html").unlink()
    process = _cli("gallery", f"output={out}", cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"gallery: {out / 'gallery.html'}" in process.stdout.splitlines()
    assert "3/3" in process.stderr  # the tqdm bar over the rows
    after = Page((out / "gallery.html").read_text())
    assert [(r["attrs"], r["links"]) for r in after.rows] == [(r["attrs"], r["links"]) for r in before.rows]

    run_id = summary["run_id"]
    process = _cli("gallery", f"output={out}", f"run={run_id}", "gallery.progress=false", cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    page_path = out / "_results" / f"run-{run_id}" / "gallery.html"
    page = Page(page_path.read_text())
    assert [r["attrs"]["data-id"] for r in page.rows] == ["boat", "fox", "bad-frames"]
    for row_id, folder in CLIPS.items():
        links = page.row(row_id)["links"]
        assert (page_path.parent / links["clip-link"]).resolve() == (out / folder / "clip.mp4").resolve()
        assert (page_path.parent / links["sidecar-link"]).is_file()


def test_no_results_or_an_unknown_run_is_a_one_line_error_naming_the_setting(batch_output, tmp_path):
    out, _ = batch_output
    (tmp_path / "empty").mkdir()
    process = _cli("gallery", f"output={tmp_path / 'empty'}", cwd=tmp_path)
    assert process.returncode == 1
    assert process.stderr.strip().splitlines() == [
        f"wan-dist gallery: output: no batch results under {tmp_path / 'empty'}/_results "
        "(is it the output= of a `wan-dist batch` run?)"]
    assert not (tmp_path / "empty" / "gallery.html").exists()
    process = _cli("gallery", f"output={out}", "run=no-such-run", cwd=tmp_path)
    assert process.returncode == 1
    [line] = process.stderr.strip().splitlines()
    assert line.startswith("wan-dist gallery: run: no results of run 'no-such-run'")


def test_a_gallery_that_cannot_be_written_is_logged_and_the_run_still_ends_well(batch_output, tmp_path, caplog):
    out, _ = batch_output
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "gallery.html").unlink()
    (copy / "gallery.html").mkdir()  # the page cannot be published over a folder
    config = BatchConfig(manifest=str(out.parent / "m.parquet"), groups=1, group=GroupSpec(cpus_per_rank=0.5))
    with caplog.at_level("WARNING", logger="wan_dist.batch"):
        summary = BatchRunner(config, OutputConfig(uri=str(copy))).run()  # a rerun: both clips are published
    assert (summary["skipped"], summary["failed"]) == (2, 1) and summary["gallery_uri"] is None
    assert exists(summary["summary_uri"])
    assert any("gallery of" in r.getMessage() and "not written" in r.getMessage() for r in caplog.records)

    # written again: the skipped rows keep the seed and timings of the run that rendered them
    (copy / "gallery.html").rmdir()
    process = _cli("gallery", f"output={copy}", "gallery.progress=false", cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    html = (copy / "gallery.html").read_text()
    page = Page(html)
    latest = latest_results(str(out))
    for row_id in CLIPS:
        row = page.row(row_id)
        assert row["attrs"]["data-status"] == "skipped" and len(row["thumbs"]) == 1
        assert f"<dt>seed</dt><dd>{latest[row_id]['seed']}</dd>" in html
        assert (copy / row["links"]["clip-link"]).is_file()


def test_a_batch_into_s3_leaves_a_gallery_with_presigned_links_and_wan_dist_gallery_rewrites_it(s3_server,
                                                                                              tmp_path):
    write_manifest(ROWS, str(tmp_path / "m.parquet"))
    output = s3_server.uri("renders")
    env = dict(s3_server.env)
    process = _cli(f"manifest={tmp_path / 'm.parquet'}", f"output={output}", "ray.num_cpus=2",
                   "ray.object_store_memory_mb=200", "batch.groups=1", "batch.progress_interval_s=60",
                   "batch.fail_on_row_errors=false", cwd=tmp_path, env=env, module="wan_dist.cli.batch")
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    assert f"gallery: {output}/gallery.html" in process.stdout.splitlines()

    def check_page() -> None:
        page = Page(read_bytes(f"{output}/gallery.html").decode("utf-8"))
        assert [r["attrs"]["data-status"] for r in page.rows] == ["completed", "completed", "failed"]
        for row_id, folder in CLIPS.items():
            row = page.row(row_id)
            assert len(row["thumbs"]) == 1
            for name, link in (("clip.mp4", row["links"]["clip-link"]), ("clip.json", row["links"]["sidecar-link"])):
                assert link.startswith(s3_server.endpoint_url + "/") and "X-Amz-Signature=" in link  # presigned
                with urllib.request.urlopen(link, timeout=30) as response:  # no credentials: the URL is enough
                    assert response.read() == read_bytes(f"{output}/{folder}/{name}")
        assert "must be 4k+1" in page.row("bad-frames")["texts"]["error"]

    check_page()
    delete(f"{output}/gallery.html")
    process = _cli("gallery", f"output={output}", "gallery.progress=false", cwd=tmp_path, env=env)
    assert process.returncode == 0, process.stderr[-3000:]
    assert exists(f"{output}/gallery.html")
    check_page()


@pytest.mark.skipif(CHROMIUM is None, reason=MISSING)
def test_the_gallery_in_a_browser_shows_a_thumbnail_per_clip_and_its_filters_work(batch_output, tmp_path):
    """gallery.html opened from the folder (file://) in headless Chromium: every clip's animated thumbnail decodes,
    the failed row shows its reason, the status and model filters and the URL's preset hide what they should."""
    from selenium.webdriver.support.ui import Select

    out, _ = batch_output
    page = (out / "gallery.html").as_uri()
    visible = "return [...document.querySelectorAll('#rows .row')].filter(r => !r.hidden).map(r => r.dataset.id)"
    with chromium(tmp_path / "profile", height=1200) as driver:
        driver.get(page)
        thumbnails = driver.execute_script(
            "return [...document.querySelectorAll('#rows .row img')].map(i => [i.closest('.row').dataset.id, "
            "i.complete && i.naturalWidth > 0])")
        assert sorted(thumbnails) == [["boat", True], ["fox", True]]  # decoded, one per clip
        assert "num_frames" in driver.execute_script(
            "return document.querySelector('.row[data-id=\"bad-frames\"]').textContent")
        assert sorted(driver.execute_script(visible)) == ["bad-frames", "boat", "fox"]
        Select(driver.find_element("id", "filter-status")).select_by_value("failed")
        assert driver.execute_script(visible) == ["bad-frames"]
        Select(driver.find_element("id", "filter-status")).select_by_value("")
        driver.find_element("id", "filter-text").send_keys("fox")
        assert driver.execute_script(visible) == ["fox"]
        driver.get("about:blank")  # a new load (the same document with another hash would not run its preset)
        driver.get(page + "#status=completed")
        assert sorted(driver.execute_script(visible)) == ["boat", "fox"]
        driver.save_screenshot(str(tmp_path / "gallery.png"))
        assert severe(driver) == []
