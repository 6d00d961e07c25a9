// A batch: upload a Parquet manifest (POST /v1/batches, multipart `manifest`), then follow it at the server's
// poll interval (done / failed / remaining, ETA, clips per hour) and show each row of its results table in a
// grid (GET /v1/batches/{id}/results: clip_url per row) as the rows are published.

import { apiFetch, apiJson, mediaUrl, pollAfter } from "./api.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export class BatchView {
  constructor({ showError }) {
    this.showError = showError;
    this.abort = null;
    this.finished = -1; // done + failed when the grid was last read
  }

  async upload(file) {
    const data = new FormData();
    data.append("manifest", file, file.name);
    const response = await apiFetch("/v1/batches", { method: "POST", body: data });
    this.follow(await response.json(), pollAfter(response));
  }

  follow(view, pollMs) {
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    this.finished = -1;
    $("batch").hidden = false;
    $("batch-id").textContent = view.id;
    $("batch-grid").replaceChildren();
    this.run(view, pollMs, this.abort.signal);
  }

  async run(view, pollMs, signal) {
    const id = encodeURIComponent(view.id);
    try {
      for (;;) {
        this.update(view);
        const finished = view.counts.done + view.counts.failed;
        const ended = TERMINAL.has(view.status);
        if (finished !== this.finished || ended) {
          this.finished = finished;
          await this.readResults(id, signal);
        }
        if (ended || signal.aborted) return;
        await new Promise((resolve) => setTimeout(resolve, pollMs));
        if (signal.aborted) return;
        ({ body: view, pollMs } = await apiJson(`/v1/batches/${id}`, { signal }));
      }
    } catch (error) {
      if (!signal.aborted) this.showError(error);
    }
  }

  update(view) {
    const status = $("batch-status");
    status.textContent = `${view.status}, ${view.counts.total} rows` +
      (view.invalid_rows ? ` (${view.invalid_rows} invalid)` : "") + (view.error ? `: ${view.error.message}` : "");
    status.className = `status-${view.status}`;
    $("batch-done").textContent = view.counts.done;
    $("batch-failed").textContent = view.counts.failed;
    $("batch-remaining").textContent = view.counts.remaining;
    $("batch-eta").textContent = TERMINAL.has(view.status) ? "—" : duration(view.eta_s);
    $("batch-rate").textContent = view.clips_per_hour ? Math.round(view.clips_per_hour) : "—";
  }

  async readResults(id, signal) {
    let after = null;
    for (;;) {
      const query = `limit=100${after === null ? "" : `&after=${after}`}`;
      const { body } = await apiJson(`/v1/batches/${id}/results?${query}`, { signal });
      for (const row of body.data) await this.showRow(row);
      if (!body.has_more || body.last_index === null) return;
      after = body.last_index;
    }
  }

  async showRow(row) {
    const grid = $("batch-grid");
    const existing = [...grid.children].find((item) => item.dataset.rowId === row.id);
    if (existing && existing.dataset.status === row.status) return;
    const item = document.createElement("li");
    item.dataset.rowId = row.id;
    item.dataset.status = row.status;
    let media;
    if (row.clip_url) {
      media = document.createElement("video");
      Object.assign(media, { muted: true, loop: true, autoplay: true, playsInline: true, controls: true });
      media.setAttribute("aria-label", `Clip of row ${row.id}`);
      try {
        media.src = await mediaUrl(row.clip_url);
      } catch (error) {
        this.showError(error);
      }
    } else {
      media = document.createElement("div");
      media.className = "placeholder";
      media.textContent = row.status;
    }
    const caption = document.createElement("p");
    caption.className = `status-${row.status}`;
    caption.textContent = `${row.id}: ${row.status}${row.error ? ` — ${row.error}` : ""}`;
    item.append(media, caption);
    if (existing) existing.replaceWith(item);
    else grid.append(item);
  }
}
