"""Platform renditions reach every door's results, rendered for real on a local Ray: an HTTP job on the `toy` model
(Serve on 127.0.0.1) lists each rendition with a URL that downloads it with the caller's key, at its profile's size
and rate, the title drawn in the box its sidecar records; a batch run's results table (and gallery) lists the
renditions of a row that asked for them and none for a row that did not, also when a rerun skips the row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from serve_fixtures import ServeApp, free_port, wait_for
from wan_dist.controls.platforms import PROFILES
from wan_dist.video.mp4 import decode_mp4

pytestmark = pytest.mark.slow

PROFILE_NAMES = ["youtube", "tiktok", "instagram_feed"]
TITLE = {"text": "Hills in spring", "fade": 0}  # no fade: the title is on every frame


def _assert_profile(video: np.ndarray, fps: float, name: str, num_frames: int) -> None:
    profile = PROFILES[name]
    assert video.shape == (num_frames, profile.height, profile.width, 3), (name, video.shape)
    assert fps == pytest.approx(profile.fps), name


def _mean_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16))[:, mask].mean())


def test_an_http_jobs_renditions_download_with_the_key_at_their_profiles_with_the_title_drawn(ray_local, tmp_path):
    from ray import serve

    from wan_dist.serve.settings import AuthSettings, LimitSettings, ServeSettings

    settings = ServeSettings(models=("toy",), store=str(tmp_path / "jobs.db"), output=str(tmp_path / "out"),
                             auth=AuthSettings(api_keys=("k1", "k2")), limits=LimitSettings(rate_per_s=1000.0, burst=1000))
    body = {"prompt": "A green circle sinks against a brown background.", "num_frames": 5, "num_inference_steps": 2,
            "size": "64x64", "seed": 11, "renditions": PROFILE_NAMES}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ServeApp(port)
    try:
        app.start(settings)
        with app.client("k1") as client, app.client(None) as anonymous, app.client("k2") as other:
            ids = {}
            for name, extra in (("titled", {"overlays": {"title": TITLE}}), ("plain", {})):
                created = client.post("/v1/models/toy/jobs", json={**body, **extra})
                assert created.status_code == 202, created.text
                ids[name] = created.json()["id"]
            views = {name: wait_for(lambda i=job_id: (v := client.get(f"/v1/jobs/{i}").json())["status"] in
                                    ("completed", "failed", "cancelled") and v, 300, what=f"the {name} job")
                     for name, job_id in ids.items()}
            videos = {}
            for name, view in views.items():
                assert view["status"] == "completed", view
                assert str(tmp_path) not in json.dumps(view), view  # issue 20: no server path
                listed = view["result"]["renditions"]
                assert [r["profile"] for r in listed] == PROFILE_NAMES
                sidecar = json.loads((Path(settings.output) / view["result"]["sidecar"]).read_text())
                records = {entry["profile"]: entry for entry in sidecar["renditions"]}
                for item in listed:
                    assert item["url"] == f"/v1/jobs/{ids[name]}/renditions/{item['profile']}"  # a local output
                    download = client.get(item["url"])
                    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
                    assert anonymous.get(item["url"]).status_code == 401
                    assert other.get(item["url"]).status_code == 404
                    video, fps = decode_mp4(download.content)
                    _assert_profile(video, fps, item["profile"], records[item["profile"]]["num_frames"])
                    videos[name, item["profile"]] = video, records[item["profile"]]["overlays"]
    finally:
        serve.shutdown()

    for profile in PROFILE_NAMES:
        titled, layout = videos["titled", profile]
        plain, no_layout = videos["plain", profile]
        assert no_layout is None and layout["title_lines"] == [TITLE["text"]]
        x0, y0, x1, y1 = layout["title_box"]
        assert 0 <= x0 < x1 <= PROFILES[profile].width and 0 <= y0 < y1 <= PROFILES[profile].height
        inside = np.zeros(titled.shape[1:3], bool)
        inside[y0:y1, x0:x1] = True
        # the same render (same seed) with and without the title: they differ in its box, hardly elsewhere
        within, outside = _mean_difference(titled, plain, inside), _mean_difference(titled, plain, ~inside)
        assert within > 8 and within > 10 * outside, (profile, within, outside)


def test_a_batch_results_table_lists_the_renditions_a_row_asked_for_and_none_for_the_others(ray_local, tmp_path):
    from wan_dist.batch.manifest import write_manifest
    from wan_dist.batch.results import latest_results
    from wan_dist.batch.runner import BatchRunner
    from wan_dist.config import BatchConfig, GroupSpec, OutputConfig

    fast = {"model": "tiny", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
    rows = [{"id": "feed", "prompt": "a paper boat on a lake", "seed": 1, **fast,
             "renditions": ["instagram_feed"], "overlays": {"guides": True}},
            {"id": "plain", "prompt": "a red fox in the snow", "seed": 2, **fast}]
    write_manifest(rows, str(tmp_path / "m.parquet"))
    out = tmp_path / "out"

    def run() -> dict:
        config = BatchConfig(manifest=str(tmp_path / "m.parquet"), groups=1, group=GroupSpec(cpus_per_rank=0.5),
                             progress_interval_s=0.5, retry_backoff_s=0.1)
        return BatchRunner(config, OutputConfig(uri=str(out), preset="ultrafast")).run()

    summary = run()
    assert (summary["completed"], summary["failed"]) == (2, 0), summary
    records = latest_results(str(out))
    assert records["plain"]["status"] == "completed" and records["plain"]["renditions"] is None
    (listed,) = records["feed"]["renditions"]
    folder = out / "feed" / "renditions"
    assert listed == {"profile": "instagram_feed", "uri": str(folder / "instagram_feed.mp4"),
                      "url": (folder / "instagram_feed.mp4").as_uri(), "guides_uri": str(folder / "instagram_feed.guides.mp4"),
                      "guides_url": (folder / "instagram_feed.guides.mp4").as_uri()}
    sidecar = json.loads((out / "feed" / "clip.json").read_text())
    for uri in (listed["uri"], listed["guides_uri"]):
        video, fps = decode_mp4(Path(uri).read_bytes())
        _assert_profile(video, fps, "instagram_feed", sidecar["renditions"][0]["num_frames"])

    page = (out / "gallery.html").read_text()
    links = re.findall(r'<a class="(rendition|guides)-link" data-profile="([^"]+)" href="([^"]+)"', page)
    assert links == [("rendition", "instagram_feed", "feed/renditions/instagram_feed.mp4"),
                     ("guides", "instagram_feed", "feed/renditions/instagram_feed.guides.mp4")]

    # a rerun skips both published rows; the skipped row's record still lists its renditions (from its sidecar)
    again = run()
    assert again["skipped"] == 2, again
    records = latest_results(str(out))
    assert records["feed"]["status"] == "skipped" and records["feed"]["run_id"] == again["run_id"]
    assert records["feed"]["renditions"] == [listed] and records["plain"]["renditions"] is None
