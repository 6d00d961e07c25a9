// Talking to the API: the key (this tab's sessionStorage only), authenticated fetches, the API's own error
// words, server-sent events read through fetch (EventSource cannot send an Authorization header) and clips
// fetched with the key into blob: URLs (a <video src> cannot send one either).

const KEY_ITEM = "wan-dist.api-key";

export function getKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** An API refusal, worded as the API words it ({error: {message, type, param, code}}). */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) { /* not JSON: the status line says it */ }
  const error = body && body.error && typeof body.error.message === "string"
    ? body.error : { message: `${response.status} ${response.statusText || "error"}` };
  return new ApiError(response.status, error);
}

/** fetch(path) with the key; an answer that is not 2xx throws its ApiError. */
export async function apiFetch(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = getKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function apiJson(path, options = {}) {
  const response = await apiFetch(path, options);
  return { body: await response.json(), pollMs: pollAfter(response) };
}

/** The server's poll interval (openai-poll-after-ms), at least 250 ms; 1 s when it gives none. */
export function pollAfter(response) {
  const value = Number(response.headers.get("openai-poll-after-ms"));
  return Number.isFinite(value) && value > 0 ? Math.max(250, value) : 1000;
}

/** Calls onEvent(event, data) for each server-sent event of GET path until the stream ends or signal aborts. */
export async function readEvents(path, onEvent, signal) {
  const response = await apiFetch(path, { headers: { Accept: "text/event-stream" }, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(event, JSON.parse(data.join("\n")));
    }
  }
}

const blobs = new Map(); // API path -> blob: URL, fetched once per page

/** A URL a <video>/<img> can load: presigned http(s) URLs as they are, API paths fetched with the key. */
export async function mediaUrl(url, apiPath) {
  if (url && /^https?:/i.test(url) && !isApiUrl(url)) return url;
  const path = apiPath || new URL(url, location.href).pathname;
  if (!blobs.has(path)) {
    const response = await apiFetch(path);
    blobs.set(path, URL.createObjectURL(await response.blob()));
  }
  return blobs.get(path);
}

function isApiUrl(url) {
  const parsed = new URL(url, location.href);
  return parsed.origin === location.origin && parsed.pathname.startsWith("/v1/");
}

/** A fresh blob: URL of GET path (not cached: e.g. the latest preview frame). */
export async function freshBlobUrl(path) {
  const response = await apiFetch(path);
  return URL.createObjectURL(await response.blob());
}
