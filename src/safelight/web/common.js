/**
 * common.js: what Safelight's pages share (the playground at / and the operator console at /admin).
 *
 * A plain ES module with no dependencies and no build step. Import what a page needs:
 *
 *   import { api, ApiError, keys, el, $, $$, clear, copyText, formatTime, formatAge } from "/ui/common.js";
 *
 * api(path, { key, method, body, form, query, signal }) -> Promise<data>
 *   Calls this server's JSON API and resolves to the envelope's `data`. `body` goes as JSON, `form`
 *   (a FormData) as multipart, `query` (an object; null/undefined/"" values left out) as the query
 *   string. With `key`, it sends `Authorization: Bearer <key>`. It rejects with an ApiError when the
 *   envelope's `code` is not 200 (kie answers business errors with HTTP 200 and the code in the body),
 *   when the HTTP status is an error, or when the answer is not JSON at all.
 *
 * ApiError: .code (the envelope's code, else the HTTP status), .msg, .data, .status (HTTP).
 *
 * keys.get(slot) / keys.set(slot, value) / keys.forget(slot)
 *   An API key kept in this browser's localStorage under "safelight.<slot>.key": slot "user" for the
 *   playground, "admin" for the console. Where localStorage is unavailable (storage disabled), the
 *   key lives only as long as the page.
 *
 * el(tag, attrs, ...children) -> Element
 *   attrs: `class`, `text` (textContent), `dataset` (object), `on` (object of event listeners),
 *   `style` (object, set through element.style), DOM properties that are booleans (hidden, disabled,
 *   checked, required, multiple...), `value`; anything else becomes an attribute (null/false: left out).
 *   children: nodes or strings (always text, never parsed as HTML); null, undefined and false are
 *   skipped and arrays are flattened.
 * $(selector, root = document), $$(selector, root = document): querySelector, and querySelectorAll as an array.
 * clear(node, ...children): empties node, then appends the children (as el() takes them).
 * copyText(text) -> Promise<boolean>: puts text on the clipboard.
 * formatTime(ms): local date and time, "2025-05-01 12:00:03"; formatAge(ms): "3 s", "4 min", "2 h", "3 d".
 * sleep(ms, signal): resolves after ms, or rejects with the signal's reason once it aborts.
 *
 * The pages are served under a Content-Security-Policy that allows only this server's own scripts,
 * styles and fetches (src/safelight/api/web.py): no inline <script>, no style="" in markup or set
 * with setAttribute; el()'s `style` object and element.style are fine.
 */

export class ApiError extends Error {
  constructor(code, msg, data = null, status = 200) {
    super(msg || `error ${code}`);
    this.name = "ApiError";
    this.code = code;
    this.msg = msg || "";
    this.data = data;
    this.status = status;
  }
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") params.append(name, String(value));
  }
  const text = params.toString();
  if (!text) return path;
  return path + (path.includes("?") ? "&" : "?") + text;
}

export function authHeaders(key) {
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export async function api(path, { key = null, method = "GET", body = undefined, form = undefined, query = null,
                                  signal = undefined } = {}) {
  const headers = { Accept: "application/json", ...authHeaders(key) };
  const init = { method, headers, signal };
  if (form !== undefined) {
    init.body = form; // the browser writes the multipart boundary
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(withQuery(path, query), init);
  const text = await response.text();
  let envelope;
  try {
    envelope = JSON.parse(text);
  } catch {
    throw new ApiError(response.status, `HTTP ${response.status}: ${text.slice(0, 200) || response.statusText}`,
                       null, response.status);
  }
  const hasCode = envelope !== null && typeof envelope === "object" && "code" in envelope;
  const code = hasCode ? Number(envelope.code) : response.status;
  if (!response.ok || code !== 200) {
    const msg = (hasCode && envelope.msg) || (envelope && envelope.detail && JSON.stringify(envelope.detail))
      || response.statusText || `error ${code}`;
    throw new ApiError(code, String(msg), hasCode ? envelope.data ?? null : null, response.status);
  }
  return hasCode ? envelope.data : envelope;
}

const memoryKeys = new Map();

function storageName(slot) {
  return `safelight.${slot}.key`;
}

export const keys = {
  get(slot) {
    try {
      return window.localStorage.getItem(storageName(slot)) || memoryKeys.get(slot) || "";
    } catch {
      return memoryKeys.get(slot) || "";
    }
  },
  set(slot, value) {
    memoryKeys.set(slot, value);
    try {
      window.localStorage.setItem(storageName(slot), value);
      return true;
    } catch {
      return false; // kept for this page only
    }
  },
  forget(slot) {
    memoryKeys.delete(slot);
    try {
      window.localStorage.removeItem(storageName(slot));
    } catch {
      /* nothing was stored */
    }
  },
};

const BOOLEAN_PROPERTIES = new Set(["hidden", "disabled", "checked", "required", "multiple", "readOnly", "open",
                                    "selected", "autofocus", "indeterminate"]);

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "style") Object.assign(node.style, value);
    else if (name === "on") for (const [event, listener] of Object.entries(value)) node.addEventListener(event, listener);
    else if (name === "value") node.value = value;
    else if (BOOLEAN_PROPERTIES.has(name)) node[name] = Boolean(value);
    else if (value !== false) node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function $$(selector, root = document) {
  return Array.from(root.querySelectorAll(selector));
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a page not served over https or localhost): select and copy.
    const area = el("textarea", { class: "visually-hidden", readOnly: true, value: text });
    document.body.append(area);
    area.select();
    let copied = false;
    try {
      copied = document.execCommand("copy");
    } catch {
      copied = false;
    }
    area.remove();
    return copied;
  }
}

function pad(number) {
  return String(number).padStart(2, "0");
}

export function formatTime(ms) {
  if (ms === null || ms === undefined || ms === "") return "";
  const date = new Date(Number(ms));
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} `
    + `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

export function formatAge(ms) {
  const seconds = Math.max(0, Math.round(Number(ms) / 1000));
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    function onAbort() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
