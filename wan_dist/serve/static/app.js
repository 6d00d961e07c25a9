// The page's wiring: the key, the models, the request form (built from /openapi.json), the followed job, the
// recent jobs and the batch. Every API call carries the pasted key; refusals are shown as the API words them.

import { ApiError, apiFetch, apiJson, getKey, setKey } from "./api.js";
import { BatchView } from "./batches.js";
import { asFormData, buildFields, collectBody, jobSchema } from "./form.js";
import { JobView, listRecent } from "./jobs.js";

const $ = (id) => document.getElementById(id);

function showError(error) {
  const box = $("error");
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  const message = document.createElement("span");
  message.className = "message";
  message.textContent = error.message;
  box.append(message);
  if (error instanceof ApiError) {
    const detail = document.createElement("small");
    detail.textContent = ` (HTTP ${error.status}${error.code ? `, ${error.code}` : ""}` +
      `${error.param ? `, field ${error.param}` : ""})`;
    box.append(detail);
  }
  box.hidden = false;
}

const jobView = new JobView({ showError, onEnded: () => refreshRecent() });
const batchView = new BatchView({ showError });

async function refreshRecent() {
  if (!getKey()) return;
  try {
    await listRecent(jobView);
  } catch (error) {
    showError(error);
  }
}

async function loadModels() {
  const select = $("model");
  const { body } = await apiJson("/v1/models");
  const chosen = select.value;
  select.replaceChildren(...body.data.map((model) => new Option(model.id, model.id)));
  if (body.data.some((model) => model.id === chosen)) select.value = chosen;
  return body.data.length;
}

async function useKey() {
  showError(null);
  const status = $("key-status");
  if (!getKey()) {
    status.textContent = "No key yet.";
    return;
  }
  try {
    const count = await loadModels();
    status.textContent = `Key accepted: ${count} model${count === 1 ? "" : "s"} served.`;
    await refreshRecent();
  } catch (error) {
    status.textContent = "The key was not accepted.";
    showError(error);
  }
}

async function submitJob(event) {
  event.preventDefault();
  showError(null);
  const button = $("submit-job");
  button.disabled = true;
  try {
    const body = collectBody($("job-form"), $("extra-json").value);
    const file = $("image-file").files[0];
    const model = encodeURIComponent($("model").value);
    const options = file
      ? { method: "POST", body: asFormData(body, file) }
      : { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } };
    const response = await apiFetch(`/v1/models/${model}/jobs`, options);
    jobView.follow(await response.json());
    refreshRecent();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function submitBatch(event) {
  event.preventDefault();
  showError(null);
  const file = $("manifest").files[0];
  if (!file) {
    showError(new Error("Choose a manifest file first."));
    return;
  }
  const button = $("submit-batch");
  button.disabled = true;
  try {
    await batchView.upload(file);
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

async function buildForm() {
  try {
    const response = await fetch("/openapi.json");
    const structured = buildFields(jobSchema(await response.json()), $("fields-main"), $("fields-more-body"));
    $("extra-json-hint").textContent = structured.length
      ? `Fields without an input above: ${structured.join(", ")}.` : "";
    document.body.dataset.formReady = "true";
  } catch (error) {
    showError(error);
  }
}

function wire() {
  $("api-key").value = getKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value.trim());
    useKey();
  });
  $("forget-key").addEventListener("click", () => {
    setKey("");
    $("api-key").value = "";
    $("model").replaceChildren();
    $("recent-list").replaceChildren();
    useKey();
  });
  $("job-form").addEventListener("submit", submitJob);
  $("job-form").addEventListener("keydown", (event) => { // Ctrl/Cmd+Enter submits from a textarea too
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("job-form").requestSubmit();
  });
  $("batch-form").addEventListener("submit", submitBatch);
  $("refresh-jobs").addEventListener("click", refreshRecent);
}

wire();
buildForm();
useKey();
