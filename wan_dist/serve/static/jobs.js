// One job followed live (status, progress and preview frames from its server-sent events, then its clip), and
// the key's recent jobs with thumbnails (the clip of a finished job, the latest preview of a rendering one).

import { apiJson, freshBlobUrl, mediaUrl, readEvents } from "./api.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

export class JobView {
  /** showError(error) shows an API refusal; onEnded() runs when a followed job reaches a terminal status. */
  constructor({ showError, onEnded }) {
    this.showError = showError;
    this.onEnded = onEnded;
    this.jobId = null;
    this.abort = null;
    $("cancel-job").addEventListener("click", () => this.cancel());
  }

  /** Follow job `view` (a job object): its events until it ends, then its clip. */
  follow(view) {
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    this.jobId = view.id;
    $("job").hidden = false;
    $("job-id").textContent = view.id;
    $("job-preview-figure").hidden = true;
    $("job-video-figure").hidden = true;
    $("job-video").removeAttribute("src");
    this.update(view);
    if (TERMINAL.has(view.status)) {
      this.finish(view);
      return;
    }
    this.listen(view.id, this.abort.signal);
  }

  async listen(id, signal) {
    let last = null;
    try {
      await readEvents(`/v1/jobs/${encodeURIComponent(id)}/events`, (event, data) => {
        if (event === "status") last = data;
        this.onEvent(event, data);
      }, signal);
    } catch (error) {
      if (signal.aborted) return;
      this.showError(error);
    }
    if (!signal.aborted && !(last && TERMINAL.has(last.status))) this.poll(id, signal); // the stream broke off
  }

  async poll(id, signal) {
    while (!signal.aborted) {
      try {
        const { body, pollMs } = await apiJson(`/v1/jobs/${encodeURIComponent(id)}`, { signal });
        this.onEvent("status", body);
        if (TERMINAL.has(body.status)) return;
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      } catch (error) {
        if (!signal.aborted) this.showError(error);
        return;
      }
    }
  }

  onEvent(event, data) {
    if (data.id !== this.jobId) return;
    if (event === "status") {
      this.update(data);
      if (TERMINAL.has(data.status)) this.finish(data);
    } else if (event === "progress") {
      this.setProgress(data.progress);
    } else if (event === "window") {
      this.setWindow(data);
    } else if (event === "preview") {
      $("job-preview").src = data.image;
      $("job-preview-caption").textContent = `Preview after step ${data.step} of ${data.total}`;
      $("job-preview-figure").hidden = false;
    }
  }

  update(view) {
    const status = $("job-status");
    const where = view.status === "queued" && view.queue_position !== null && view.queue_position !== undefined
      ? ` (position ${view.queue_position + 1} in the queue)` : "";
    status.textContent = `${view.status}${where}, ${view.progress}% — ${view.model}`;
    status.className = `status-${view.status}`;
    if (view.error) status.textContent += `: ${view.error.message}`;
    this.setProgress(view.progress);
    this.setWindow(view.window);
    $("cancel-job").hidden = TERMINAL.has(view.status);
  }

  // A long clip renders window after window (a storyboard: shot after shot); null once it is not rendering.
  setWindow(window) {
    const line = $("job-window");
    line.hidden = !window;
    if (!window) return;
    line.textContent = `Window ${window.index} of ${window.count}` +
      (window.shots > 1 ? `, shot ${window.shot} of ${window.shots}` : "");
  }

  setProgress(progress) {
    $("job-progress").value = progress;
    $("job-progress").textContent = `${progress}%`;
  }

  async finish(view) {
    if (this.abort) this.abort.abort();
    $("job-preview-figure").hidden = true;
    if (view.status === "completed") {
      try {
        const url = await mediaUrl(view.result && view.result.clip_url, `/v1/jobs/${encodeURIComponent(view.id)}/content`);
        if (view.id !== this.jobId) return;
        const video = $("job-video");
        video.src = url;
        $("job-download").href = url;
        await this.showRenditions(view);
        $("job-video-figure").hidden = false;
        video.play().catch(() => {}); // muted autoplay; a browser that refuses leaves the controls
      } catch (error) {
        this.showError(error);
      }
    }
    this.onEnded(view);
  }

  /** A download link per rendition (and its guides copy) of a completed job: `result.renditions`. */
  async showRenditions(view) {
    const links = [];
    for (const rendition of (view.result && view.result.renditions) || []) {
      for (const [key, label] of [["url", rendition.profile], ["guides_url", `${rendition.profile} (guides)`]]) {
        if (!rendition[key]) continue;
        const link = document.createElement("a");
        link.className = key === "url" ? "rendition-link" : "guides-link";
        link.textContent = label;
        link.download = `${rendition.profile}${key === "url" ? "" : ".guides"}.mp4`;
        link.href = await mediaUrl(rendition[key]);
        links.push(link);
      }
    }
    $("job-renditions").replaceChildren(...links);
  }

  async cancel() {
    if (!this.jobId) return;
    try {
      const { body } = await apiJson(`/v1/jobs/${encodeURIComponent(this.jobId)}/cancel`, { method: "POST" });
      this.update(body);
    } catch (error) {
      this.showError(error);
    }
  }
}

function thumbnail(view) {
  const box = document.createElement("div");
  box.className = "placeholder";
  box.textContent = view.status === "in_progress" ? `${view.progress}%` : view.status;
  return box;
}

async function fillThumbnail(item, view) {
  const id = encodeURIComponent(view.id);
  let media = null;
  if (view.status === "completed") {
    media = document.createElement("video");
    media.muted = true;
    media.loop = true;
    media.playsInline = true;
    media.preload = "metadata";
    media.title = "Plays while the pointer is over it";
    media.addEventListener("mouseenter", () => media.play().catch(() => {}));
    media.addEventListener("mouseleave", () => media.pause());
    media.src = await mediaUrl(view.result && view.result.clip_url, `/v1/jobs/${id}/content`);
  } else if (view.status === "in_progress" && view.preview) {
    media = document.createElement("img");
    media.alt = `Preview of job ${view.id}`;
    media.src = await freshBlobUrl(`/v1/jobs/${id}/preview`);
  }
  if (media) item.querySelector(".placeholder").replaceWith(media);
}

/** Lists the key's recent jobs into #recent-list; choosing one follows it in `jobView`. */
export async function listRecent(jobView) {
  const list = $("recent-list");
  const { body } = await apiJson("/v1/jobs?limit=12");
  list.replaceChildren();
  for (const view of body.data) {
    const item = document.createElement("li");
    item.dataset.jobId = view.id;
    const prompt = (view.request && view.request.prompt) || "";
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Show";
    button.addEventListener("click", () => jobView.follow(view));
    const caption = document.createElement("p");
    caption.append(`${view.status} · ${view.model}`, document.createElement("br"), prompt.slice(0, 80));
    caption.className = `status-${view.status}`;
    item.append(thumbnail(view), caption, button);
    list.append(item);
    // a thumbnail is a convenience: one that cannot load (a render that ended between the list and its preview
    // frame) keeps its placeholder rather than raising an error over the page
    fillThumbnail(item, view).catch(() => {});
  }
  if (!body.data.length) {
    const empty = document.createElement("li");
    empty.textContent = "No jobs yet for this key.";
    list.append(empty);
  }
}
