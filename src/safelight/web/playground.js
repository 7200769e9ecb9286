// The playground (/): pick a model, fill the form its JSON schema describes, create a task, follow it
// live, and see its images. It uses the public API only, with the key the person saved:
//   GET  /api/v1/models               the models and their input schemas (no key needed)
//   POST /api/file-stream-upload      reference images chosen with a file picker
//   POST /api/v1/jobs/createTask      the task
//   GET  /api/v1/jobs/stream          its state and progress (server-sent events read with fetch, since
//                                     EventSource cannot send a key); recordInfo each second if that fails
//   POST /api/v1/jobs/cancel          cancel while unfinished
//   GET  /api/v1/jobs/list            history

import { api, ApiError, authHeaders, keys, el, $, $$, clear, copyText, formatTime, sleep } from "./common.js";

const KEY_SLOT = "user";
const LOCAL_TASKS = "safelight.playground.tasks"; // task ids created in this browser, newest first
const LAST_MODEL = "safelight.playground.model";
const UPLOAD_PATH = "playground";
const POLL_MS = 1000;
const TERMINAL = new Set(["success", "fail"]);
const URL_PATTERN = /^https?:\/\/\S+$/;

const view = {
  models: [],
  model: null, // the chosen model's entry from /api/v1/models
  fields: [], // the form's fields, as built by buildField
  follow: null, // AbortController of the task being followed
  taskId: null,
};

// ---------------------------------------------------------------- key

function currentKey() {
  return keys.get(KEY_SLOT);
}

function showKey() {
  const key = currentKey();
  $("#key-form").hidden = Boolean(key);
  $("#key-saved").hidden = !key;
  $("#key-prefix").textContent = key ? `${key.slice(0, 8)}…` : "";
  $("#key-credits").textContent = "";
  if (key) {
    api("/api/v1/chat/credit", { key }).then(
      (credits) => { $("#key-credits").textContent = `${credits} credits`; },
      (error) => { $("#key-credits").textContent = `(${error.msg})`; },
    );
  }
}

function setUpKey() {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("#key-input").value.trim();
    if (!value) {
      $("#key-input").focus();
      return;
    }
    keys.set(KEY_SLOT, value);
    $("#key-input").value = "";
    showKey();
    refreshHistory();
    $("#key-forget").focus();
  });
  $("#key-forget").addEventListener("click", () => {
    keys.forget(KEY_SLOT);
    showKey();
    refreshHistory();
    $("#key-input").focus();
  });
  showKey();
}

function requireKey() {
  const key = currentKey();
  if (!key) throw new ApiError(401, "Save your API key at the top of the page first.");
  return key;
}

// ---------------------------------------------------------------- schema -> form

const META = ["title", "description", "default", "examples"];

function resolveRef(schema, root) {
  let current = schema || {};
  for (let depth = 0; current.$ref && depth < 16; depth += 1) {
    const match = /^#\/(\$defs|definitions)\/(.+)$/.exec(current.$ref);
    const target = match ? (root[match[1]] || {})[decodeURIComponent(match[2])] : null;
    const { $ref, ...rest } = current;
    current = { ...(target || {}), ...rest };
  }
  return current;
}

// `anyOf: [X, {type: null}]` (pydantic's optional) and `type: [X, "null"]` become X, marked nullable.
function normalise(schema, root) {
  let current = resolveRef(schema, root);
  for (const combiner of ["anyOf", "oneOf"]) {
    if (!Array.isArray(current[combiner])) continue;
    const branches = current[combiner].map((branch) => resolveRef(branch, root));
    const real = branches.filter((branch) => branch.type !== "null");
    if (real.length === 1) {
      const meta = Object.fromEntries(META.filter((name) => name in current).map((name) => [name, current[name]]));
      current = { ...real[0], ...meta, nullable: real.length < branches.length };
    }
  }
  if (Array.isArray(current.type)) {
    const types = current.type.filter((type) => type !== "null");
    current = { ...current, type: types.length === 1 ? types[0] : types, nullable: types.length < current.type.length };
  }
  return current;
}

function isUrlString(schema, name) {
  if (schema.type !== "string") return false;
  if (schema.format === "uri" || schema.format === "url") return true;
  if (schema.pattern && schema.pattern.includes("https?:")) return true;
  return /(^|_)urls?$/.test(name) && !schema.enum;
}

function fieldKind(name, schema, root) {
  if (Array.isArray(schema.enum) && schema.enum.length) return "enum";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "integer" || schema.type === "number") return "number";
  if (isUrlString(schema, name)) return "url";
  if (schema.type === "array" && isUrlString(normalise(schema.items || {}, root), name)) return "urls";
  if (schema.type === "string") return name.includes("prompt") ? "textarea" : "text";
  return "json";
}

function labelText(name, schema) {
  if (schema.title) return schema.title;
  const words = name.replace(/[_-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// A field's label (the schema's title, a * when required, and the JSON name), control and description.
// `described` is the control the description belongs to (the control itself unless given).
// The label holds the title alone (what assistive technology reads, with `required` on the control);
// the * and the JSON name beside it are for the eye.
function fieldShell(field, control, { group = false, described = control } = {}) {
  const hintId = `${field.id}-hint`;
  const extras = [
    field.required ? el("span", { class: "required-mark", "aria-hidden": "true", title: "required" }, "*") : null,
    el("code", { class: "field-name", "aria-hidden": "true" }, field.name),
  ];
  const label = group
    ? el("legend", { class: "label-row" }, labelText(field.name, field.schema), " ", extras)
    : el("div", { class: "label-row" }, el("label", { for: field.id }, labelText(field.name, field.schema)), extras);
  const hint = field.schema.description ? el("p", { class: "hint", id: hintId }, field.schema.description) : null;
  if (hint && !group) described.setAttribute("aria-describedby", hintId);
  const shell = el(group ? "fieldset" : "div", { class: ["field", `kind-${field.kind}`], dataset: { field: field.name } },
                   label, control, hint);
  if (group && hint) shell.setAttribute("aria-describedby", hintId);
  return shell;
}

function numberAttrs(schema) {
  const attrs = { step: schema.type === "integer" ? "1" : (schema.multipleOf ? String(schema.multipleOf) : "any") };
  // Seeds allow the whole 64-bit range; bounds beyond what a browser counts exactly are left to the server.
  for (const [bound, attr] of [["minimum", "min"], ["maximum", "max"]]) {
    const value = schema[bound];
    if (typeof value === "number" && Math.abs(value) <= Number.MAX_SAFE_INTEGER) attrs[attr] = String(value);
  }
  return attrs;
}

function buildField(name, rawSchema, required, root) {
  const schema = normalise(rawSchema, root);
  const kind = fieldKind(name, schema, root);
  const field = { name, schema, required, kind, id: `field-${name.replace(/[^A-Za-z0-9_-]/g, "-")}` };
  const builder = BUILDERS[kind];
  builder(field, root);
  if (schema.default !== undefined && schema.default !== null) field.write(schema.default);
  return field;
}

const BUILDERS = {
  enum(field) {
    const { schema } = field;
    const select = el("select", { id: field.id, name: field.name, required: field.required });
    const hasDefault = schema.default !== undefined && schema.default !== null;
    if (!field.required || (!hasDefault && schema.nullable)) {
      select.append(el("option", { value: "" }, "(not set)"));
    }
    schema.enum.forEach((value, index) => select.append(el("option", { value: String(index) }, String(value))));
    field.element = fieldShell(field, select);
    field.focusTarget = select;
    field.read = () => (select.value === "" ? undefined : schema.enum[Number(select.value)]);
    field.write = (value) => {
      const index = schema.enum.findIndex((option) => option === value || String(option) === String(value));
      select.value = index >= 0 ? String(index) : "";
    };
    field.check = () => "";
  },

  boolean(field) {
    const box = el("input", { id: field.id, name: field.name, type: "checkbox", class: "switch", role: "switch" });
    const hintId = `${field.id}-hint`;
    if (field.schema.description) box.setAttribute("aria-describedby", hintId);
    field.element = el("div", { class: ["field", "kind-boolean"], dataset: { field: field.name } },
                       el("div", { class: "switch-row" }, box,
                          el("label", { for: field.id }, labelText(field.name, field.schema)),
                          el("code", { class: "field-name", "aria-hidden": "true" }, field.name)),
                       field.schema.description ? el("p", { class: "hint", id: hintId }, field.schema.description) : null);
    field.focusTarget = box;
    field.read = () => box.checked;
    field.write = (value) => { box.checked = Boolean(value); };
    field.check = () => "";
  },

  number(field) {
    const { schema } = field;
    const input = el("input", { id: field.id, name: field.name, type: "number", inputmode: schema.type === "integer"
      ? "numeric" : "decimal", required: field.required, ...numberAttrs(schema) });
    field.element = fieldShell(field, input);
    field.focusTarget = input;
    field.read = () => (input.value.trim() === "" ? undefined : Number(input.value));
    field.write = (value) => { input.value = value === null || value === undefined ? "" : String(value); };
    field.check = () => "";
  },

  text(field) {
    textField(field, false);
  },

  textarea(field) {
    textField(field, true);
  },

  json(field) {
    const area = el("textarea", { id: field.id, name: field.name, rows: "4", spellcheck: "false", class: "mono",
                                  required: field.required, placeholder: "JSON" });
    field.element = fieldShell(field, area);
    field.focusTarget = area;
    field.read = () => {
      const text = area.value.trim();
      if (!text) return undefined;
      try {
        return JSON.parse(text);
      } catch {
        return text;
      }
    };
    field.write = (value) => { area.value = value === undefined ? "" : JSON.stringify(value, null, 2); };
    field.check = () => {
      const text = area.value.trim();
      if (!text) return "";
      try {
        JSON.parse(text);
        return "";
      } catch (error) {
        return `${field.name} must be JSON: ${error.message}`;
      }
    };
  },

  url(field) {
    const { schema } = field;
    const input = el("input", { id: field.id, name: field.name, type: "url", required: field.required,
                                placeholder: "https://… or upload a file", maxlength: schema.maxLength ?? null,
                                inputmode: "url", spellcheck: "false" });
    const preview = el("img", { class: "thumb", alt: "", hidden: true, on: { error: markBroken } });
    const status = el("p", { class: "hint upload-status", "aria-live": "polite" });
    const picker = filePicker(field, false, async (files) => {
      const [url] = await uploadAll(files, status);
      if (url) {
        input.value = url;
        showPreview();
        changed();
      }
    });
    function showPreview() {
      const value = input.value.trim();
      preview.hidden = !URL_PATTERN.test(value);
      if (!preview.hidden && preview.getAttribute("src") !== value) {
        preview.classList.remove("broken");
        preview.src = value;
      }
    }
    input.addEventListener("change", showPreview);
    const control = el("div", { class: "url-field" }, el("div", { class: "row url-row" }, input, picker), preview, status);
    field.element = fieldShell(field, control, { described: input });
    field.focusTarget = input;
    field.read = () => (input.value.trim() === "" ? undefined : input.value.trim());
    field.write = (value) => {
      input.value = value ? String(value) : "";
      showPreview();
    };
    field.check = () => "";
  },

  urls(field, root) {
    const { schema } = field;
    const itemSchema = normalise(schema.items || {}, root);
    const max = typeof schema.maxItems === "number" ? schema.maxItems : Infinity;
    const min = typeof schema.minItems === "number" ? schema.minItems : (field.required ? 1 : 0);
    let urls = [];
    const list = el("ul", { class: "url-list", "aria-label": `${labelText(field.name, schema)}: chosen images` });
    const paste = el("input", { id: field.id, type: "url", placeholder: "https://… (Enter adds it)", inputmode: "url",
                                spellcheck: "false", maxlength: itemSchema.maxLength ?? null });
    const add = el("button", { class: "button small", type: "button" }, "Add URL");
    const status = el("p", { class: "hint upload-status", "aria-live": "polite" });
    const count = el("p", { class: "hint" });

    function render() {
      clear(list, urls.map((url, index) => el("li", { class: "url-item" },
        el("img", { class: "thumb", src: url, alt: `Image ${index + 1}`, on: { error: markBroken } }),
        el("a", { href: url, target: "_blank", rel: "noopener", class: "url-text" }, shortUrl(url)),
        el("button", { class: "button small quiet", type: "button", "aria-label": `Remove image ${index + 1}`,
                       on: { click: () => { urls.splice(index, 1); render(); changed(); add.focus(); } } }, "Remove"))));
      const limits = max === Infinity ? `at least ${min}` : `${min}-${max}`;
      count.textContent = `${urls.length} image${urls.length === 1 ? "" : "s"} (${limits}).`;
      paste.setCustomValidity("");
    }
    function addUrls(values) {
      for (const value of values) {
        if (urls.length >= max) {
          status.textContent = `At most ${max} images here.`;
          break;
        }
        urls.push(value);
      }
      render();
      changed();
    }
    function addPasted() {
      const value = paste.value.trim();
      if (!value) return false;
      if (!URL_PATTERN.test(value)) {
        paste.setCustomValidity("Enter an http:// or https:// URL.");
        paste.reportValidity();
        return true;
      }
      paste.value = "";
      addUrls([value]);
      return true;
    }
    add.addEventListener("click", () => addPasted());
    paste.addEventListener("keydown", (event) => {
      // Enter adds the typed URL; on an empty box it submits the form as usual.
      if (event.key === "Enter" && paste.value.trim()) {
        event.preventDefault();
        addPasted();
      }
    });
    paste.addEventListener("input", () => paste.setCustomValidity(""));
    const picker = filePicker(field, max > 1, async (files) => {
      const room = max - urls.length;
      if (room <= 0) {
        status.textContent = `At most ${max} images here.`;
        return;
      }
      addUrls(await uploadAll(files.slice(0, room), status));
    });
    const control = el("div", { class: "urls-field" }, list, count,
                       el("div", { class: "row url-row" }, picker,
                          el("label", { for: field.id, class: "visually-hidden" }, `${labelText(field.name, schema)}: an image URL`),
                          paste, add), status);
    field.element = fieldShell(field, control, { group: true });
    field.focusTarget = paste;
    field.read = () => (urls.length ? [...urls] : undefined);
    field.write = (value) => {
      urls = Array.isArray(value) ? value.map(String).slice(0, max) : [];
      render();
    };
    field.check = () => {
      if (urls.length < min) {
        return `${labelText(field.name, schema)} needs at least ${min} image${min === 1 ? "" : "s"}: upload one or paste its URL.`;
      }
      return "";
    };
    render();
  },
};

function textField(field, multiline) {
  const { schema } = field;
  const attrs = { id: field.id, name: field.name, required: field.required, maxlength: schema.maxLength ?? null,
                  minlength: schema.minLength ?? null, spellcheck: multiline ? "true" : "false" };
  const input = multiline
    ? el("textarea", { ...attrs, rows: field.name === "prompt" ? "4" : "2" })
    : el("input", { ...attrs, type: "text" });
  field.element = fieldShell(field, input);
  field.focusTarget = input;
  field.read = () => (input.value === "" ? undefined : input.value);
  field.write = (value) => { input.value = value === null || value === undefined ? "" : String(value); };
  field.check = () => "";
}

function filePicker(field, multiple, onFiles) {
  const input = el("input", { type: "file", accept: "image/png,image/jpeg,image/webp", multiple,
                              class: "visually-hidden", id: `${field.id}-file` });
  input.addEventListener("change", async () => {
    const files = Array.from(input.files || []);
    input.value = "";
    if (files.length) await onFiles(files);
  });
  return el("label", { class: "button small file-button", for: `${field.id}-file` },
            multiple ? "Upload images…" : "Upload image…", input);
}

function markBroken(event) {
  event.target.classList.add("broken");
}

function shortUrl(url) {
  try {
    const parsed = new URL(url);
    const name = parsed.pathname.split("/").filter(Boolean).pop() || parsed.host;
    return `${parsed.host}/…/${decodeURIComponent(name)}`;
  } catch {
    return url;
  }
}

function uniqueName(name) {
  const dot = name.lastIndexOf(".");
  const stem = (dot > 0 ? name.slice(0, dot) : name).replace(/[^A-Za-z0-9_-]+/g, "_").replace(/^[_-]+/, "").slice(0, 60);
  const extension = dot > 0 ? name.slice(dot + 1).replace(/[^A-Za-z0-9]/g, "").slice(0, 8) : "";
  const random = Array.from(crypto.getRandomValues(new Uint8Array(4)), (byte) => byte.toString(16).padStart(2, "0")).join("");
  // Uploads keep their name, and a name used again is overwritten: a fresh suffix keeps each one.
  return `${stem || "image"}-${random}${extension ? `.${extension}` : ""}`;
}

async function uploadAll(files, status) {
  const urls = [];
  try {
    const key = requireKey();
    for (const [index, file] of files.entries()) {
      status.textContent = `Uploading ${file.name} (${index + 1} of ${files.length})…`;
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("uploadPath", UPLOAD_PATH);
      form.append("fileName", uniqueName(file.name));
      const data = await api("/api/file-stream-upload", { key, method: "POST", form });
      urls.push(data.downloadUrl);
    }
    status.textContent = files.length === 1 ? `Uploaded ${files[0].name}.` : `Uploaded ${files.length} files.`;
  } catch (error) {
    status.textContent = `Upload failed: ${error.msg || error.message}`;
  }
  return urls;
}

// ---------------------------------------------------------------- models

function stored(name) {
  try {
    return localStorage.getItem(name);
  } catch {
    return null;
  }
}

function priceText(model) {
  const entries = Object.entries(model.prices || {});
  const unit = model.priceUnit || "credits";
  if (!entries.length) return "priced by the operator";
  if (entries.length === 1) {
    const [[, price]] = entries;
    return `${price} ${price === 1 ? unit.replace(/^credits\b/, "credit") : unit}`;
  }
  return `${entries.map(([tier, price]) => `${tier}: ${price}`).join(", ")} ${unit}`;
}

function modelLabel(model) {
  const title = model.title && model.title !== model.id ? `${model.title} (${model.id})` : model.id;
  return model.enabled === false ? `${title}: disabled` : title;
}

async function loadModels() {
  const select = $("#model-select");
  try {
    view.models = await api("/api/v1/models");
  } catch (error) {
    clear($("#model-notices"), el("div", { class: "notice error", role: "alert" },
                                  `The models could not be loaded: ${error.msg || error.message}`));
    return;
  }
  clear(select, view.models.map((model) => el("option", { value: model.id }, modelLabel(model))));
  const wanted = new URLSearchParams(location.hash.slice(1)).get("model") || stored(LAST_MODEL);
  const initial = view.models.find((model) => model.id === wanted) || view.models[0];
  if (initial) {
    select.value = initial.id;
    chooseModel(initial.id);
  }
  select.addEventListener("change", () => chooseModel(select.value));
}

function chooseModel(id, input = null) {
  const model = view.models.find((entry) => entry.id === id);
  if (!model) return;
  view.model = model;
  $("#model-select").value = id;
  try {
    localStorage.setItem(LAST_MODEL, id);
  } catch {
    /* not remembered */
  }
  history.replaceState(null, "", `#model=${encodeURIComponent(id)}`);
  clear($("#model-info"),
        model.description ? el("span", {}, model.description, " ") : null,
        el("span", { class: "price" }, `Price: ${priceText(model)}.`));
  const notices = [];
  if (model.sandbox) {
    notices.push(el("div", { id: "sandbox-notice", class: "notice warn", role: "note" },
      el("strong", {}, "Sandbox: "),
      `on this server, ${model.id} draws labelled previews (prompt, size and seed), not generations. `
      + "They show how the API behaves; real images need a GPU pipeline or a provider on the model's route."));
  }
  if (model.enabled === false) {
    notices.push(el("div", { class: "notice error", role: "note" },
                    `${model.id} is disabled by the operator: createTask answers code 505 until it is enabled again.`));
  }
  clear($("#model-notices"), notices);
  buildForm(model, input);
  $("#submit").disabled = model.enabled === false;
  updateSnippets();
}

function buildForm(model, input) {
  const schema = model.inputSchema || {};
  const required = new Set(schema.required || []);
  view.fields = [];
  if (model.passThrough) {
    // Any model id this server forwards as it is: the id and the input JSON are the caller's.
    view.fields.push(buildField("model", { type: "string", title: "Model id", minLength: 1,
      description: "The upstream model id, forwarded unchanged." }, true, schema));
    view.fields.push(buildField("input", { type: "object", title: "Input",
      description: "The model's input as a JSON object; the upstream validates it." }, true, schema));
  } else {
    for (const [name, property] of Object.entries(schema.properties || {})) {
      view.fields.push(buildField(name, property, required.has(name), schema));
    }
  }
  if (input) writeInput(input);
  clear($("#fields"), view.fields.map((field) => field.element));
  clear($("#form-status"));
}

function writeInput(input) {
  for (const field of view.fields) {
    if (view.model.passThrough) {
      if (field.name === "input") field.write(input);
    } else if (field.name in input) {
      field.write(input[field.name]);
    }
  }
}

function requestBody() {
  if (view.model.passThrough) {
    const values = Object.fromEntries(view.fields.map((field) => [field.name, field.read()]));
    return { model: values.model || "", input: values.input ?? {} };
  }
  const input = {};
  for (const field of view.fields) {
    const value = field.read();
    if (value !== undefined) input[field.name] = value;
  }
  return { model: view.model.id, input };
}

// ---------------------------------------------------------------- code snippets

function shellQuote(text) {
  return `'${text.replace(/'/g, "'\\''")}'`;
}

function pythonLiteral(value, indent = "") {
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "None";
  if (typeof value === "string") return JSON.stringify(value); // a JSON string is a valid Python string
  const inner = `${indent}    `;
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => `${inner}${pythonLiteral(item, inner)},`).join("\n")}\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([name, item]) => `${inner}${JSON.stringify(name)}: ${pythonLiteral(item, inner)},`)
    .join("\n")}\n${indent}}`;
}

function updateSnippets() {
  if (!view.model) return;
  const body = requestBody();
  const origin = location.origin;
  $("#snippet-curl").textContent = [
    `curl -s ${origin}/api/v1/jobs/createTask \\`,
    '  -H "Authorization: Bearer $SAFELIGHT_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${shellQuote(JSON.stringify(body, null, 2))}`,
  ].join("\n");
  $("#snippet-python").textContent = [
    "from safelight.client import Client",
    "",
    `# The key comes from SAFELIGHT_API_KEY.`,
    `with Client(base_url=${JSON.stringify(origin)}) as client:`,
    `    task = client.run(${JSON.stringify(body.model)}, ${pythonLiteral(body.input, "    ")})`,
    "    print(task.state, task.result_urls, task.seeds)",
    '    print(client.download(task, "out"))',
  ].join("\n");
}

function setUpSnippets() {
  const form = $("#task-form");
  form.addEventListener("input", updateSnippets);
  form.addEventListener("change", updateSnippets);
  const tabs = $$("[role=tab]");
  function select(tab) {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
    }
  }
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = tabs[(index + step + tabs.length) % tabs.length];
      select(next);
      next.focus();
    });
  });
  for (const button of $$("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const copied = await copyText($(`#${button.dataset.copy}`).textContent);
      $("#copy-status").textContent = copied ? "Copied." : "Could not copy: select the text instead.";
      const label = button.textContent;
      button.textContent = copied ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = label; }, 1500);
    });
  }
}

function changed() {
  updateSnippets();
}

// ---------------------------------------------------------------- submit

function formProblem() {
  for (const field of view.fields) {
    const problem = field.check();
    if (problem) return { field, problem };
  }
  const form = $("#task-form");
  if (!form.checkValidity()) {
    const invalid = form.querySelector(":invalid");
    return { element: invalid, problem: invalid?.validationMessage || "Check the form." };
  }
  return null;
}

async function submit(event) {
  event.preventDefault();
  const status = $("#form-status");
  clear(status);
  const key = currentKey();
  if (!key) {
    clear(status, el("div", { class: "notice error" }, "Save your API key at the top of the page first."));
    $("#key-input").focus();
    return;
  }
  const problem = formProblem();
  if (problem) {
    clear(status, el("div", { class: "notice error" }, problem.problem));
    (problem.element || problem.field.focusTarget)?.focus();
    return;
  }
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Creating…";
  try {
    const body = requestBody();
    const data = await api("/api/v1/jobs/createTask", { key, method: "POST", body });
    rememberTask(data.taskId);
    openTask(data.taskId, { model: body.model, state: "waiting", progress: 0 });
    refreshHistory();
  } catch (error) {
    clear(status, el("div", { class: "notice error" }, `createTask answered ${error.code}: ${error.msg || error.message}`));
  } finally {
    button.disabled = view.model?.enabled === false;
    button.textContent = "Generate";
  }
}

function setUpForm() {
  const form = $("#task-form");
  form.addEventListener("submit", submit);
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target instanceof HTMLTextAreaElement) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}

// ---------------------------------------------------------------- following a task

function rememberTask(taskId) {
  const ids = localTasks().filter((id) => id !== taskId);
  ids.unshift(taskId);
  try {
    localStorage.setItem(LOCAL_TASKS, JSON.stringify(ids.slice(0, 200)));
  } catch {
    /* not remembered */
  }
}

function localTasks() {
  try {
    const ids = JSON.parse(stored(LOCAL_TASKS) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
  } catch {
    return [];
  }
}

function openTask(taskId, preview = {}) {
  view.follow?.abort();
  const controller = new AbortController();
  view.follow = controller;
  view.taskId = taskId;
  const record = { taskId, state: "waiting", progress: 0, ...preview };
  renderTask(record);
  announce(record);
  followTask(taskId, record, controller.signal).catch((error) => {
    if (controller.signal.aborted) return;
    showTaskError(error);
  });
}

async function followTask(taskId, record, signal) {
  let latest = record;
  let complete = false; // whether a whole record from the server has been shown
  const update = (next) => {
    if (signal.aborted) return;
    const previous = latest.state;
    latest = { ...latest, ...next };
    if (latest.state === previous && complete) {
      showProgress(latest.progress); // re-rendering would take the focus off the Cancel button
      return;
    }
    renderTask(latest);
    complete = "createTime" in latest;
    if (latest.state !== previous) announce(latest);
    if (TERMINAL.has(latest.state)) refreshHistory();
  };
  try {
    if (await streamTask(taskId, update, signal)) return;
  } catch (error) {
    if (signal.aborted) return;
    if (error instanceof ApiError && error.status === 200) throw error; // the task itself is unknown
  }
  // The stream is not there, was cut, or failed: ask every second instead.
  while (!signal.aborted) {
    update(await api("/api/v1/jobs/recordInfo", { key: requireKey(), query: { taskId }, signal }));
    if (TERMINAL.has(latest.state)) return;
    await sleep(POLL_MS, signal);
  }
}

// Reads GET /api/v1/jobs/stream as server-sent events; true once the `done` event arrived.
async function streamTask(taskId, update, signal) {
  const response = await fetch(`/api/v1/jobs/stream?taskId=${encodeURIComponent(taskId)}`, {
    headers: { Accept: "text/event-stream", ...authHeaders(requireKey()) },
    signal,
  });
  const type = response.headers.get("content-type") || "";
  if (!response.ok || !type.startsWith("text/event-stream")) {
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      return false;
    }
    if (body && body.code !== undefined && body.code !== 200) throw new ApiError(body.code, body.msg, body.data, response.status);
    return false;
  }
  let done = false;
  const parse = sseParser((event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    if (event.type === "progress") update({ progress: data.progress });
    else if (event.type === "state" || event.type === "done") update(data);
    if (event.type === "done") done = true;
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      parse(value);
    }
  } finally {
    if (done) await reader.cancel().catch(() => {});
  }
  return done;
}

// An incremental parser of the text/event-stream format (lines ending in \n, \r\n or \r).
function sseParser(onEvent) {
  let pending = "";
  let type = "";
  let data = [];
  return (chunk) => {
    pending += chunk;
    // A chunk that ends in \r may be half of \r\n: keep it until the next chunk shows.
    const holdBack = pending.endsWith("\r") ? 1 : 0;
    const lines = pending.slice(0, pending.length - holdBack).split(/\r\n|\r|\n/);
    pending = lines.pop() + pending.slice(pending.length - holdBack);
    for (const line of lines) {
      if (line === "") {
        if (data.length) onEvent({ type: type || "message", data: data.join("\n") });
        type = "";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "event") type = value;
        else if (name === "data") data.push(value);
      }
    }
  };
}

function announce(record) {
  const words = { waiting: "waiting for a worker", queuing: "queuing", generating: "generating",
                  success: "finished", fail: "failed" };
  $("#task-announcer").textContent = `Task ${record.state ? words[record.state] || record.state : ""}`
    + (record.state === "fail" && record.failMsg ? `: ${record.failMsg}` : ".");
}

function showTaskError(error) {
  $("#task-view").append(el("div", { class: "notice error", role: "alert" },
                            `Could not follow the task: ${error.msg || error.message}`));
}

function parseJson(text) {
  if (!text || typeof text !== "string") return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function percent(progress) {
  return Math.max(0, Math.min(100, Math.round(Number(progress) || 0)));
}

function showProgress(progress) {
  $("#task-progress").value = percent(progress);
  $("#progress-value").textContent = `${percent(progress)} %`;
}

function renderTask(record) {
  const progress = percent(record.progress);
  const unfinished = !TERMINAL.has(record.state);
  const result = parseJson(record.resultJson) || {};
  const param = parseJson(record.param) || {};
  const facts = [
    ["Task", el("code", { class: "task-id" }, record.taskId)],
    record.model ? ["Model", record.model] : null,
    record.createTime ? ["Created", formatTime(record.createTime)] : null,
    record.costTime ? ["Took", `${(record.costTime / 1000).toFixed(1)} s`] : null,
    record.creditsConsumed !== undefined && record.creditsConsumed !== null && !unfinished
      ? ["Credits", String(record.creditsConsumed)] : null,
    record.state === "waiting" && record.queuePosition !== undefined ? ["Queue position", String(record.queuePosition)] : null,
  ].filter(Boolean);
  const children = [
    el("div", { class: "row spread" },
       el("span", { class: ["badge", `state-${record.state}`], id: "task-state" }, record.state || "…"),
       unfinished ? el("button", { id: "task-cancel", class: "button small danger", type: "button",
                                   on: { click: () => cancelTask(record.taskId) } }, "Cancel task") : null,
       !unfinished && Object.keys(param).length
         ? el("button", { class: "button small", type: "button", on: { click: () => reuse(param) } }, "Reuse settings")
         : null),
    el("div", { class: "progress-row" },
       el("progress", { id: "task-progress", max: "100", value: String(progress), "aria-labelledby": "progress-label" }),
       el("span", { id: "progress-label" }, el("span", { class: "visually-hidden" }, "Progress "),
          el("span", { id: "progress-value" }, `${progress} %`))),
    el("dl", { class: "facts" }, facts.map(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
  ];
  if (record.state === "fail") {
    children.push(el("div", { class: "notice error", id: "task-fail", role: "alert" },
                     el("strong", {}, `failCode ${record.failCode || "?"}: `), record.failMsg || "the task failed"));
  }
  if (record.state === "success") children.push(gallery(record, result));
  clear($("#task-view"), children);
}

function gallery(record, result) {
  const urls = Array.isArray(result.resultUrls) ? result.resultUrls : [];
  const seeds = Array.isArray(result.seeds) ? result.seeds : [];
  if (!urls.length) return el("p", { class: "muted" }, "The result files have expired (the record stays).");
  return el("ul", { class: "gallery", "aria-label": "Results" }, urls.map((url, index) => {
    const seed = seeds[index];
    const caption = `Image ${index + 1} of ${urls.length}${seed !== undefined && seed !== null ? `, seed ${seed}` : ""}`;
    return el("li", { class: "result" },
      el("button", { class: "result-open", type: "button", "aria-label": `Open ${caption.toLowerCase()}`,
                     on: { click: () => openViewer(url, caption, record.taskId, index) } },
         el("img", { src: url, alt: caption, class: "result-image" })),
      el("div", { class: "row spread result-meta" },
         el("span", { class: "seed" }, seed !== undefined && seed !== null ? `seed ${seed}` : "no seed"),
         el("a", { href: url, download: downloadName(url, record.taskId, index), class: "button small" }, "Download",
            el("span", { class: "visually-hidden" }, ` image ${index + 1}`))));
  }));
}

function downloadName(url, taskId, index) {
  try {
    const name = new URL(url, location.href).pathname.split("/").pop() || "";
    return name.startsWith(taskId) ? name : `${taskId}_${name || `${index}.png`}`;
  } catch {
    return `${taskId}_${index}`;
  }
}

function openViewer(url, caption, taskId, index) {
  const dialog = $("#viewer");
  const image = $("#viewer-image");
  image.src = url;
  image.alt = caption;
  $("#viewer-caption").textContent = caption;
  $("#viewer-download").href = url;
  $("#viewer-download").setAttribute("download", downloadName(url, taskId, index));
  $("#viewer-open").href = url;
  dialog.showModal();
  $("#viewer-close").focus();
}

function setUpViewer() {
  const dialog = $("#viewer");
  $("#viewer-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close(); // a click on the backdrop
  });
}

// Fills the form with a finished task's request (its `param`).
function reuse(param) {
  const input = param.input && typeof param.input === "object" ? param.input : {};
  if (view.models.some((entry) => entry.id === param.model && !entry.passThrough)) {
    chooseModel(param.model, input);
  } else {
    const passThrough = view.models.find((entry) => entry.passThrough);
    if (!passThrough) return;
    chooseModel(passThrough.id, input);
    view.fields.find((field) => field.name === "model")?.write(param.model);
  }
  updateSnippets();
  $("#model-select").focus();
}

async function cancelTask(taskId) {
  const button = $("#task-cancel");
  if (button) {
    button.disabled = true;
    button.textContent = "Cancelling…";
  }
  try {
    const record = await api("/api/v1/jobs/cancel", { key: requireKey(), method: "POST", body: { taskId } });
    if (view.taskId === taskId) {
      view.follow?.abort();
      renderTask(record);
      announce(record);
    }
    refreshHistory();
  } catch (error) {
    $("#task-view").append(el("div", { class: "notice error", role: "alert" }, `Cancel failed: ${error.msg || error.message}`));
    if (button) {
      button.disabled = false;
      button.textContent = "Cancel task";
    }
  }
}

// ---------------------------------------------------------------- history

let historyRun = 0;

async function refreshHistory() {
  const box = $("#history");
  const key = currentKey();
  if (!key) {
    clear(box, el("p", { class: "muted" }, "Save your API key to see your tasks."));
    return;
  }
  const run = ++historyRun;
  const all = $("#history-all").checked;
  const mine = new Set(localTasks());
  let items;
  try {
    items = (await api("/api/v1/jobs/list", { key, query: { limit: 100 } })).items || [];
  } catch (error) {
    if (run === historyRun) clear(box, el("p", { class: "notice error" }, `The task list could not be read: ${error.msg}`));
    return;
  }
  if (run !== historyRun) return; // a newer refresh is under way
  if (!all) items = items.filter((item) => mine.has(item.taskId));
  if (!items.length) {
    clear(box, el("p", { class: "muted" }, all ? "No tasks yet." : "No tasks from this browser yet."));
    return;
  }
  clear(box, el("ul", { class: "history-list" }, items.map((item) => {
    const param = parseJson(item.param) || {};
    const prompt = param.input && typeof param.input.prompt === "string" ? param.input.prompt : "";
    return el("li", {},
      el("button", { class: ["history-item", item.taskId === view.taskId ? "current" : null], type: "button",
                     dataset: { task: item.taskId },
                     on: { click: () => openTask(item.taskId, { model: item.model, state: item.state }) } },
         el("span", { class: ["badge", `state-${item.state}`] }, item.state),
         el("span", { class: "history-model" }, item.model),
         el("span", { class: "history-prompt" }, prompt || "(no prompt)"),
         el("time", { class: "history-time muted", datetime: new Date(item.createTime).toISOString() },
            formatTime(item.createTime))));
  })));
}

function setUpHistory() {
  $("#history-refresh").addEventListener("click", refreshHistory);
  $("#history-all").addEventListener("change", refreshHistory);
}

// ---------------------------------------------------------------- start

setUpKey();
setUpForm();
setUpSnippets();
setUpViewer();
setUpHistory();
refreshHistory();
loadModels();
