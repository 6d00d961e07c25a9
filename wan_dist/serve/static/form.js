// The request form, built from the API's own description of a job body (the OpenAPI schema of
// POST /v1/models/{model}/jobs, generated from engine/request.py's REQUEST_FIELDS): a new field there shows up
// here. Scalar fields become inputs (the common ones up front, the rest under "More settings"); objects and
// lists (metadata, camera, layers, loras) go in the "Other fields as JSON" box.

const JOB_PATH = "/v1/models/{model}/jobs";
const MAIN = ["prompt", "negative_prompt", "width", "height", "num_frames", "duration_s", "fps",
  "num_inference_steps", "guidance_scale", "seed"];
const LABELS = {
  prompt: "Prompt", negative_prompt: "Negative prompt", num_frames: "Frames", duration_s: "Duration (s)",
  fps: "Frames per second", num_inference_steps: "Steps", guidance_scale: "Guidance", image: "Image URL",
};
const TEXTAREAS = new Set(["prompt", "negative_prompt"]);

/** The job body's JSON schema in the OpenAPI document. */
export function jobSchema(openapi) {
  const post = openapi.paths && openapi.paths[JOB_PATH] && openapi.paths[JOB_PATH].post;
  const content = post && post.requestBody && post.requestBody.content;
  const schema = content && content["application/json"] && content["application/json"].schema;
  if (!schema || !schema.properties) throw new Error(`/openapi.json does not describe POST ${JOB_PATH}`);
  return schema;
}

/** {type, enum, minimum, ...} of a property, its `X | null` union unwrapped, with the outer title/description. */
function describe(name, property) {
  const variants = property.anyOf ? property.anyOf.filter((v) => v.type !== "null") : [property];
  const inner = variants.length === 1 ? variants[0] : { type: "string" };
  const spec = { ...inner, title: property.title || name, description: inner.description || property.description };
  if ("const" in inner) spec.enum = [inner.const];
  return spec;
}

function isScalar(spec) {
  return ["string", "integer", "number", "boolean"].includes(spec.type) || Array.isArray(spec.enum);
}

function control(name, spec) {
  if (Array.isArray(spec.enum)) {
    const select = document.createElement("select");
    for (const value of ["", ...spec.enum]) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value === "" ? "(server default)" : String(value);
      select.append(option);
    }
    return select;
  }
  if (spec.type === "boolean") {
    const box = document.createElement("input");
    box.type = "checkbox";
    return box;
  }
  const input = document.createElement(TEXTAREAS.has(name) ? "textarea" : "input");
  if (input.tagName === "TEXTAREA") input.rows = name === "prompt" ? 3 : 2;
  if (spec.type === "integer" || spec.type === "number") {
    input.type = "number";
    input.step = spec.type === "integer" ? "1" : "any";
    if (spec.minimum !== undefined) input.min = spec.minimum;
    if (spec.maximum !== undefined) input.max = spec.maximum;
    input.inputMode = spec.type === "integer" ? "numeric" : "decimal";
  } else if (input.tagName === "INPUT") {
    input.type = "text";
  }
  if (spec.maxLength !== undefined) input.maxLength = spec.maxLength;
  return input;
}

function fieldElement(name, spec, required) {
  const wrapper = document.createElement("div");
  const input = control(name, spec);
  input.id = `f-${name}`;
  input.name = name;
  input.dataset.type = Array.isArray(spec.enum) ? "enum" : spec.type;
  if (required) input.required = true;
  const label = document.createElement("label");
  label.htmlFor = input.id;
  label.textContent = LABELS[name] || spec.title;
  const checkbox = input.type === "checkbox";
  wrapper.className = `field${TEXTAREAS.has(name) ? " wide" : ""}${checkbox ? " check" : ""}`;
  wrapper.append(...(checkbox ? [input, label] : [label, input]));
  if (spec.description) {
    const hint = document.createElement("small");
    hint.className = "hint";
    hint.id = `f-${name}-hint`;
    hint.textContent = spec.description;
    input.setAttribute("aria-describedby", hint.id);
    wrapper.append(hint);
  }
  return wrapper;
}

/** Fills the two containers with the schema's scalar fields; returns the names of the structured ones. */
export function buildFields(schema, mainBox, moreBox) {
  const required = new Set(schema.required || []);
  const names = Object.keys(schema.properties);
  const ordered = [...MAIN.filter((n) => names.includes(n)), ...names.filter((n) => !MAIN.includes(n))];
  const structured = [];
  mainBox.replaceChildren();
  moreBox.replaceChildren();
  for (const name of ordered) {
    const spec = describe(name, schema.properties[name]);
    if (!isScalar(spec)) {
      structured.push(name);
      continue;
    }
    (MAIN.includes(name) ? mainBox : moreBox).append(fieldElement(name, spec, required.has(name)));
  }
  return structured;
}

function valueOf(input) {
  const type = input.dataset.type;
  if (type === "boolean") return input.checked ? true : undefined;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (type === "integer" || type === "number") {
    const number = Number(text);
    return Number.isFinite(number) ? number : text; // not a number: the API says why
  }
  return input.tagName === "TEXTAREA" ? input.value : text;
}

/** The body the form describes: its filled fields, over the fields of the JSON box. Throws on bad JSON. */
export function collectBody(form, extraText) {
  let body = {};
  if (extraText.trim()) {
    try {
      body = JSON.parse(extraText);
    } catch (error) {
      throw new Error(`Other fields as JSON: ${error.message}`);
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
      throw new Error("Other fields as JSON: must be a JSON object");
    }
  }
  for (const input of form.querySelectorAll("[data-type]")) {
    const value = valueOf(input);
    if (value !== undefined) body[input.name] = value;
  }
  return body;
}

/** The body as multipart form fields (the API reads a[b] as nested objects, a[] as lists), with the file. */
export function asFormData(body, file) {
  const data = new FormData();
  const add = (name, value) => {
    if (value === null || value === undefined) return;
    if (Array.isArray(value)) value.forEach((item) => add(`${name}[]`, item));
    else if (typeof value === "object") Object.entries(value).forEach(([k, v]) => add(`${name}[${k}]`, v));
    else data.append(name, String(value));
  };
  Object.entries(body).forEach(([name, value]) => add(name, value));
  data.append("image", file, file.name);
  return data;
}
