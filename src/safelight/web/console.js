// The operator console: a thin page over the admin JSON API (/api/admin/...).
// Everything shown comes from that API; data is put in the page as text, never as HTML.

const KEY_STORAGE = "safelight.console.adminKey";
const QUEUE_REFRESH_MS = 3000;
const STATES = ["waiting", "queuing", "generating", "success", "fail"];
const UNFINISHED = new Set(["waiting", "queuing", "generating"]);

const $ = (selector, root = document) => root.querySelector(selector);

/** An answer from the admin API that is not a success: `status` is the envelope's code (= HTTP status). */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

const session = { key: null, server: null };

// --- the API -------------------------------------------------------------------------------------

async function api(method, path, { query, body, key } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  const headers = { Authorization: `Bearer ${key || session.key}`, Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (error) {
    throw new ApiError(0, `The server did not answer (${error.message}).`);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // Not JSON: described below by its HTTP status.
  }
  if (!response.ok || !payload || payload.code !== 200) {
    const status = (payload && payload.code) || response.status;
    const message = (payload && payload.msg) || `HTTP ${response.status} ${response.statusText}`.trim();
    const error = new ApiError(status, message);
    if (status === 401 && !key && session.key) signOut(`Signed out: ${message}`);
    throw error;
  }
  return payload.data;
}

const enc = encodeURIComponent;

// --- small DOM helpers ---------------------------------------------------------------------------

/** An element with attributes (on* = event listeners) and children (strings become text). */
function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name === "class") element.className = value;
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

function time(ms) {
  if (ms === null || ms === undefined || ms === "") return h("span", { class: "muted" }, "–");
  const date = new Date(Number(ms));
  const text = date.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
  return h("time", { datetime: date.toISOString(), title: date.toISOString() }, text);
}

function age(ms) {
  const seconds = Math.max(0, Math.round(Number(ms) / 1000));
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${seconds % 60} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const stateBadge = (state) => h("span", { class: `badge state-${state}` }, state);
const muted = (text) => h("span", { class: "muted" }, text);
const mono = (text) => h("code", { class: "mono" }, text);

function emptyRow(tbody, text) {
  const columns = tbody.closest("table").querySelectorAll("thead th").length;
  tbody.append(h("tr", { class: "empty" }, h("td", { colspan: columns }, text)));
}

function taskLink(taskId) {
  return h("button", {
    type: "button", class: "link mono", "data-task": taskId, title: "Open the task's record",
    "aria-label": `Open task ${taskId}`, onclick: () => openRecord(taskId),
  }, taskId);
}

// --- announcements, errors, confirmation -----------------------------------------------------------

function announce(text, kind = "ok") {
  const region = $("#announce");
  region.textContent = "";
  region.className = `announce ${kind}`;
  // A fresh text node after clearing, so a repeated message is announced again.
  window.requestAnimationFrame(() => { region.textContent = text; });
  clearTimeout(announce.timer);
  if (kind !== "error") announce.timer = setTimeout(() => { region.textContent = ""; }, 8000);
}

function announceError(error, what) {
  const message = error instanceof ApiError ? error.message : String(error);
  announce(`${what} failed: ${message}`, "error");
}

/** Ask before a destructive action; resolves true only when the operator confirms. */
function confirmAction(title, message, confirmLabel) {
  const dialog = $("#confirm-dialog");
  $("#confirm-title").textContent = title;
  $("#confirm-message").textContent = message;
  $("#confirm-ok").textContent = confirmLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    dialog.showModal();
  });
}

/** Run `action` (an async API call) with `button` disabled, announcing success or the API's error. */
async function act(button, what, action, success) {
  if (button) button.disabled = true;
  try {
    const result = await action();
    announce(typeof success === "function" ? success(result) : success);
    return result;
  } catch (error) {
    announceError(error, what);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// --- paged tables ------------------------------------------------------------------------------------

/** A table filled from a list route ({items, nextCursor}), with a "Load more" button. */
class PagedTable {
  constructor({ table, more, path, row, empty }) {
    this.tbody = $(`${table} tbody`);
    this.more = $(more);
    this.path = path;
    this.row = row;
    this.empty = empty;
    this.query = {};
    this.cursor = null;
    this.generation = 0;
    this.more.addEventListener("click", () => this.load(false));
  }

  async load(reset = true, query = undefined) {
    if (query !== undefined) this.query = query;
    if (reset) this.cursor = null;
    const generation = ++this.generation;
    this.more.disabled = true;
    try {
      const data = await api("GET", this.path, { query: { ...this.query, cursor: reset ? undefined : this.cursor } });
      if (generation !== this.generation) return;  // a newer load replaced this one
      if (reset) this.tbody.replaceChildren();
      for (const item of data.items) this.tbody.append(this.row(item));
      if (reset && data.items.length === 0) emptyRow(this.tbody, this.empty);
      this.cursor = data.nextCursor;
      this.more.hidden = !data.nextCursor;
    } catch (error) {
      if (generation !== this.generation) return;
      if (reset) {
        this.tbody.replaceChildren();
        emptyRow(this.tbody, `Could not load: ${error.message}`);
      }
      announceError(error, "Loading");
    } finally {
      this.more.disabled = false;
    }
  }
}

function formQuery(form) {
  const query = {};
  for (const [name, value] of new FormData(form)) if (String(value).trim()) query[name] = String(value).trim();
  return query;
}

// --- Queue ------------------------------------------------------------------------------------------

function breakerText(breakers) {
  const entries = Object.entries(breakers || {});
  if (entries.length === 0) return muted("none");
  return h("ul", { class: "plain-list" }, entries.map(([backend, breaker]) => {
    const parts = [`${backend}: ${breaker.state}`];
    if (breaker.failures) parts.push(`${breaker.failures} failures`);
    if (breaker.reason) parts.push(breaker.reason);
    const item = h("li", { class: breaker.state === "closed" ? "" : "breaker-open" }, parts.join(" · "));
    if (breaker.retryAt) item.append(" · retry ", time(breaker.retryAt));
    return item;
  }));
}

async function loadQueue() {
  let queue;
  try {
    queue = await api("GET", "/api/admin/queue");
  } catch (error) {
    $("#queue-updated").textContent = `Could not load the queue: ${error.message}`;
    return;
  }
  $("#queue-states").replaceChildren(...STATES.map((state) => h("div", { class: `stat state-${state}`, "data-state": state },
    h("dt", {}, state), h("dd", {}, String(queue.states[state] ?? 0)))));

  const oldest = queue.oldestWaiting;
  $("#queue-oldest").replaceChildren(oldest
    ? h("span", {}, h("strong", { id: "oldest-age" }, age(oldest.ageMs)), ` (${oldest.model}) `, taskLink(oldest.taskId))
    : muted("No task is waiting."));
  $("#queue-callbacks").replaceChildren(
    h("span", {}, `${queue.callbacks.pending} pending, `),
    h("span", { class: queue.callbacks.failed ? "warn-text" : "" }, `${queue.callbacks.failed} given up`));

  const models = $("#queue-models tbody");
  models.replaceChildren(...queue.unfinishedByModel.map((entry) => h("tr", {},
    h("td", {}, entry.model), h("td", {}, stateBadge(entry.state)), h("td", { class: "num" }, String(entry.count)))));
  if (queue.unfinishedByModel.length === 0) emptyRow(models, "No unfinished tasks.");

  const workers = $("#queue-workers tbody");
  workers.replaceChildren(...queue.workers.map((worker) => h("tr", {},
    h("td", {}, h("span", { class: "mono" }, worker.id), h("br"), muted(`${worker.host} · pid ${worker.pid}`)),
    h("td", {}, worker.models.length ? worker.models.join(", ") : muted("all models")),
    h("td", { class: "num" }, String(worker.inFlight)),
    h("td", {}, breakerText(worker.breakers)),
    h("td", {}, time(worker.startedAt)),
    h("td", {}, time(worker.lastSeen)))));
  if (queue.workers.length === 0) emptyRow(workers, "No live workers: tasks wait until one starts.");

  $("#queue-updated").replaceChildren("Updated ", time(Date.now()));
}

// --- task record -------------------------------------------------------------------------------------

function attemptsList(attempts) {
  if (!attempts || attempts.length === 0) return muted("none");
  return h("ol", { class: "attempts" }, attempts.map((attempt) => h("li", {},
    h("strong", {}, attempt.backend), ` ${attempt.outcome}`,
    attempt.failCode ? ` (${attempt.failCode})` : "",
    attempt.detail ? h("span", { class: "muted" }, ` ${attempt.detail}`) : "")));
}

function definitionList(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

function deliveryLog(log) {
  if (!log || log.length === 0) return muted("no attempts yet");
  return h("ol", { class: "attempt-log" }, log.map((attempt) => h("li", {},
    time(attempt.at), " · ",
    attempt.statusCode ? `HTTP ${attempt.statusCode}` : "no answer",
    attempt.latencyMs !== null && attempt.latencyMs !== undefined ? ` · ${attempt.latencyMs} ms` : "",
    attempt.error ? h("span", { class: "error-text" }, ` · ${attempt.error}`) : "")));
}

function resultLinks(record) {
  let result = null;
  try {
    result = record && record.resultJson ? JSON.parse(record.resultJson) : null;
  } catch {
    return muted("resultJson is not JSON");
  }
  const urls = (result && result.resultUrls) || [];
  if (urls.length === 0) return muted("none");
  return h("ul", { class: "plain-list" }, urls.map((url, index) =>
    h("li", {}, h("a", { href: url, target: "_blank", rel: "noopener" }, `result ${index + 1}`))));
}

async function openRecord(taskId) {
  const dialog = $("#record-dialog");
  const body = $("#record-body");
  $("#record-title").textContent = `Task ${taskId}`;
  body.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  let detail;
  try {
    detail = await api("GET", `/api/admin/tasks/${enc(taskId)}`);
  } catch (error) {
    body.replaceChildren(h("p", { class: "error", role: "alert" }, `Could not load the task: ${error.message}`));
    return;
  }
  const { task, record, callbacks } = detail;
  const parts = [
    definitionList([
      ["State", stateBadge(task.state)],
      ["Model", task.model],
      ["Account", `${task.account} (#${task.accountId})`],
      ["Created", time(task.createTime)],
      ["Updated", time(task.updateTime)],
      ["Completed", time(task.completeTime)],
      ["Progress", `${task.progress ?? 0} %`],
      ["Backend", task.backend || muted("none")],
      ["Credits", `${task.creditsConsumed ?? 0} consumed of ${task.creditsReserved ?? 0} reserved`],
      ["failCode", task.failCode || muted("–")],
      ["failMsg", task.failMsg ? h("span", { class: "error-text" }, task.failMsg) : muted("–")],
      ["Callback URL", task.callBackUrl || muted("none")],
      ["Results", resultLinks(record)],
    ]),
    h("h3", {}, "Backend attempts"), attemptsList(task.backendAttempts),
    h("h3", {}, "Callback deliveries"),
    callbacks.length === 0 ? muted("none") : h("ul", { class: "plain-list" }, callbacks.map((delivery) => h("li", {},
      `#${delivery.id} ${delivery.status}, ${delivery.attempts} attempts → ${delivery.url}`, deliveryLog(delivery.log)))),
    h("details", {}, h("summary", {}, "The record as its owner sees it (recordInfo)"),
      h("pre", { class: "json" }, JSON.stringify(record, null, 2))),
  ];
  if (UNFINISHED.has(task.state)) {
    parts.push(h("div", { class: "dialog-actions" }, h("button", {
      type: "button", class: "danger", onclick: async (event) => {
        if (await cancelTask(task.taskId, event.currentTarget)) openRecord(task.taskId);
      },
    }, "Cancel this task")));
  }
  body.replaceChildren(...parts);
}

async function cancelTask(taskId, button) {
  const confirmed = await confirmAction("Cancel the task?",
    `Task ${taskId} will fail with failCode 499 and its credits are refunded.`, "Cancel task");
  if (!confirmed) return false;
  const result = await act(button, "Cancelling the task", () => api("POST", `/api/admin/tasks/${enc(taskId)}/cancel`),
    `Task ${taskId} cancelled.`);
  return result !== undefined;
}

// --- Failures and Tasks ---------------------------------------------------------------------------------

function failureRow(task) {
  return h("tr", { "data-task-id": task.taskId },
    h("td", {}, taskLink(task.taskId)),
    h("td", {}, task.model),
    h("td", {}, task.account),
    h("td", {}, task.failCode || muted("–")),
    h("td", { class: "wrap" }, task.failMsg || muted("–")),
    h("td", {}, attemptsList(task.backendAttempts)),
    h("td", {}, time(task.completeTime || task.updateTime)));
}

function taskRow(task) {
  const actions = h("td", {});
  if (UNFINISHED.has(task.state)) {
    actions.append(h("button", {
      type: "button", class: "danger small", "aria-label": `Cancel task ${task.taskId}`,
      onclick: async (event) => { if (await cancelTask(task.taskId, event.currentTarget)) pages.tasks.load(); },
    }, "Cancel"));
  }
  return h("tr", { "data-task-id": task.taskId },
    h("td", {}, taskLink(task.taskId)),
    h("td", {}, task.model),
    h("td", {}, stateBadge(task.state)),
    h("td", {}, task.account),
    h("td", { class: "num" }, `${task.progress ?? 0} %`),
    h("td", {}, task.backend || muted("–")),
    h("td", { class: "num" }, String(task.state === "success" ? task.creditsConsumed : task.creditsReserved ?? 0)),
    h("td", {}, time(task.createTime)),
    actions);
}

// --- Callbacks ---------------------------------------------------------------------------------------------

function deliveryRow(delivery) {
  return h("tr", { "data-delivery-id": delivery.id },
    h("td", { class: "mono" }, `#${delivery.id}`),
    h("td", {}, taskLink(delivery.taskId)),
    h("td", {}, delivery.account),
    h("td", { class: "wrap mono" }, delivery.url),
    h("td", {}, h("span", { class: `badge delivery-${delivery.status}` },
      delivery.status === "failed" ? "given up" : delivery.status)),
    h("td", { class: "num" }, String(delivery.attempts)),
    h("td", {}, delivery.status === "delivered" ? time(delivery.deliveredAt)
      : delivery.status === "pending" ? time(delivery.nextAttemptAt) : muted("–")),
    h("td", {}, delivery.log && delivery.log.length
      ? h("details", {}, h("summary", {}, `${delivery.log.length} attempt${delivery.log.length === 1 ? "" : "s"}`),
        deliveryLog(delivery.log))
      : muted("none"),
    delivery.lastError ? h("div", { class: "error-text" }, delivery.lastError) : ""),
    h("td", {}, h("button", {
      type: "button", class: "small", "aria-label": `Redeliver callback ${delivery.id}`,
      onclick: (event) => redeliver(delivery, event.currentTarget),
    }, "Redeliver")));
}

async function redeliver(delivery, button) {
  const created = await act(button, "Redelivering the callback",
    () => api("POST", `/api/admin/callbacks/${enc(delivery.id)}/redeliver`),
    (fresh) => `Callback of task ${delivery.taskId} queued again as delivery #${fresh.id}.`);
  if (created !== undefined) loadCallbacks();
}

/** The default view (pending and given up) joins two lists; the others page through one. */
async function loadCallbacks() {
  const query = formQuery($("#callbacks-filter"));
  if (query.status !== "attention") {
    await pages.callbacks.load(true, query);
    return;
  }
  const generation = ++pages.callbacks.generation;
  const tbody = pages.callbacks.tbody;
  pages.callbacks.more.hidden = true;
  try {
    const [pending, failed] = await Promise.all(["pending", "failed"].map((status) =>
      api("GET", "/api/admin/callbacks", { query: { ...query, status, limit: 100 } })));
    if (generation !== pages.callbacks.generation) return;
    const items = [...pending.items, ...failed.items].sort((a, b) => b.createdAt - a.createdAt || b.id - a.id);
    tbody.replaceChildren(...items.map(deliveryRow));
    if (items.length === 0) emptyRow(tbody, "No callback is pending or given up.");
  } catch (error) {
    if (generation !== pages.callbacks.generation) return;
    tbody.replaceChildren();
    emptyRow(tbody, `Could not load: ${error.message}`);
    announceError(error, "Loading callbacks");
  }
}

// --- Accounts, keys, ledger ------------------------------------------------------------------------------

function accountRow(account) {
  return h("tr", { "data-account": account.name },
    h("td", {}, account.name, " ", muted(`#${account.id}`)),
    h("td", { class: "num", "data-balance": "" }, String(account.balance)),
    h("td", { class: "num" }, String(account.keys)),
    h("td", { class: "num" }, String(account.unfinished)),
    h("td", {}, time(account.createdAt)),
    h("td", { class: "actions" },
      h("button", { type: "button", class: "small", "aria-label": `Add credits to ${account.name}`,
        onclick: () => openCredits(account) }, "Add credits"),
      h("button", { type: "button", class: "small secondary", "aria-label": `Rotate the webhook secret of ${account.name}`,
        onclick: (event) => rotateSecret(account, event.currentTarget) }, "Rotate webhook secret"),
      h("button", { type: "button", class: "small secondary", "aria-label": `Show the ledger of ${account.name}`,
        onclick: () => showLedger(account.name) }, "Ledger")));
}

function limitsText(key) {
  const limits = key.limits || {};
  const caps = ["hour", "day", "total"].filter((period) => limits[period] !== null && limits[period] !== undefined)
    .map((period) => `${period} ≤ ${limits[period]}`);
  return caps.length ? caps.join(" · ") : muted("no caps");
}

function keyRow(key) {
  const revoked = Boolean(key.revokedAt);
  const actions = h("td", { class: "actions" });
  if (!key.admin && !revoked) {
    actions.append(h("button", { type: "button", class: "small secondary", "aria-label": `Set limits of key ${key.name}`,
      onclick: () => openLimits(key) }, "Limits"));
  }
  if (!revoked) {
    actions.append(h("button", { type: "button", class: "small danger", "aria-label": `Revoke key ${key.name} (${key.prefix})`,
      onclick: (event) => revokeKey(key, event.currentTarget) }, "Revoke"));
  }
  const usage = key.usage ? `hour ${key.usage.hour} · day ${key.usage.day} · total ${key.usage.total}` : "–";
  return h("tr", { "data-key-id": key.id, class: revoked ? "revoked" : "" },
    h("td", {}, key.name, " ", mono(key.prefix)),
    h("td", {}, key.admin ? h("span", { class: "badge admin" }, "admin key") : key.account),
    h("td", {}, key.admin ? muted("–") : limitsText(key)),
    h("td", {}, key.admin ? muted("–") : usage),
    h("td", {}, key.admin ? muted("–") : key.allowedIps ? key.allowedIps.join(", ") : muted("any address")),
    h("td", {}, time(key.createdAt)),
    h("td", {}, revoked ? h("span", {}, "revoked ", time(key.revokedAt)) : h("span", { class: "badge live" }, "live")),
    actions);
}

function ledgerRow(entry) {
  return h("tr", {},
    h("td", {}, time(entry.createdAt)),
    h("td", {}, entry.account),
    h("td", {}, entry.kind),
    h("td", { class: `num ${entry.amount < 0 ? "debit" : "credit"}` }, entry.amount > 0 ? `+${entry.amount}` : String(entry.amount)),
    h("td", { class: "num" }, String(entry.balanceAfter)),
    h("td", {}, entry.taskId ? taskLink(entry.taskId) : muted("–")),
    h("td", { class: "wrap" }, entry.note || ""));
}

function loadAccountsPanel() {
  pages.accounts.load();
  pages.keys.load();
  pages.ledger.load(true, formQuery($("#ledger-filter")));
}

function showLedger(accountName) {
  const form = $("#ledger-filter");
  form.elements.account.value = accountName;
  form.elements.kind.value = "";
  form.elements.task.value = "";
  pages.ledger.load(true, formQuery(form));
  $("#ledger-title").scrollIntoView({ block: "start" });
  form.elements.account.focus();
}

async function revokeKey(key, button) {
  const confirmed = await confirmAction("Revoke the key?",
    `Key ${key.name} (${key.prefix}) stops working within 2 seconds: requests with it get code 401. This cannot be undone.`,
    "Revoke key");
  if (!confirmed) return;
  const result = await act(button, "Revoking the key", () => api("POST", `/api/admin/keys/${enc(key.id)}/revoke`),
    `Key ${key.name} (${key.prefix}) revoked.`);
  if (result !== undefined) pages.keys.load();
}

async function rotateSecret(account, button) {
  const confirmed = await confirmAction("Rotate the webhook secret?",
    `Callbacks of ${account.name} will be signed with a new secret at once; receivers that check signatures ` +
    "with the old one will refuse them until they are given the new one.", "Rotate secret");
  if (!confirmed) return;
  const result = await act(button, "Rotating the webhook secret",
    () => api("POST", `/api/admin/accounts/${enc(account.name)}/webhook-secret`),
    `The webhook secret of ${account.name} was rotated.`);
  if (result !== undefined) {
    $("#new-secret").value = result.webhookSecret;
    $("#secret-dialog").showModal();
  }
}

/** A dialog form whose "save" submit runs `save()` and closes only when it succeeds. */
function dialogForm(formSelector, errorSelector, save) {
  const form = $(formSelector);
  const error = $(errorSelector);
  form.addEventListener("submit", async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return;  // the dialog closes as usual
    event.preventDefault();
    error.hidden = true;
    const button = form.querySelector('[value="save"]');
    button.disabled = true;
    try {
      await save(new FormData(form));
      form.closest("dialog").close("save");
    } catch (problem) {
      error.textContent = problem.message;
      error.hidden = false;
      announceError(problem, "Saving");
    } finally {
      button.disabled = false;
    }
  });
}

let limitsKey = null;

function openLimits(key) {
  limitsKey = key;
  const form = $("#limits-form");
  $("#limits-title").textContent = `Limits of key ${key.name} (${key.prefix})`;
  for (const period of ["hour", "day", "total"]) form.elements[period].value = key.limits?.[period] ?? "";
  form.elements.allowedIps.value = (key.allowedIps || []).join("\n");
  $("#limits-error").hidden = true;
  $("#limits-dialog").showModal();
}

function wholeOrNull(value, field) {
  const text = String(value).trim();
  if (!text) return null;
  if (!/^\d+$/.test(text) || Number(text) < 1) {
    throw new ApiError(400, `${field} must be a whole number of credits >= 1, or empty for no cap; got '${text}'`);
  }
  return Number(text);
}

async function saveLimits(data) {
  const ips = String(data.get("allowedIps")).split(/[\s,]+/).map((entry) => entry.trim()).filter(Boolean);
  const body = {
    hour: wholeOrNull(data.get("hour"), "Per rolling hour"),
    day: wholeOrNull(data.get("day"), "Per rolling day"),
    total: wholeOrNull(data.get("total"), "In total"),
    allowedIps: ips.length ? ips : null,
  };
  const key = limitsKey;
  await api("PUT", `/api/admin/keys/${enc(key.id)}/limits`, { body });
  announce(`Limits of key ${key.name} saved.`);
  pages.keys.load();
}

let creditsAccount = null;

function openCredits(account) {
  creditsAccount = account;
  const form = $("#credits-form");
  $("#credits-title").textContent = `Add credits to ${account.name} (balance ${account.balance})`;
  form.elements.amount.value = "";
  form.elements.note.value = "granted by operator";
  $("#credits-error").hidden = true;
  $("#credits-dialog").showModal();
}

async function saveCredits(data) {
  const text = String(data.get("amount")).trim();
  if (!/^-?\d+$/.test(text) || Number(text) === 0) {
    throw new ApiError(400, `Amount must be a whole number other than 0 (negative deducts); got '${text}'`);
  }
  const account = creditsAccount;
  const result = await api("POST", `/api/admin/accounts/${enc(account.name)}/credits`,
    { body: { amount: Number(text), note: String(data.get("note")) } });
  announce(`${account.name}: balance is now ${result.balance}.`);
  pages.accounts.load();
  pages.ledger.load();
}

async function createKey(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const name = form.elements.name.value.trim();
  if (!name) {
    announce("Creating the key failed: name is required (1 to 100 characters).", "error");
    form.elements.name.focus();
    return;
  }
  const credits = Number(form.elements.credits.value || 0);
  const body = { name, account: form.elements.account.value.trim() || null, credits, admin: form.elements.admin.checked };
  if (body.admin) {
    delete body.account;
    delete body.credits;
  }
  const created = await act(form.querySelector('button[type="submit"]'), "Creating the key",
    () => api("POST", "/api/admin/keys", { body }),
    (result) => `${result.admin ? "Admin key" : "Key"} ${name} (${result.prefix}) created.`);
  if (created === undefined) return;
  form.reset();
  $("#new-key").value = created.key;
  $("#new-key-facts").textContent = created.admin ? "An admin key: it administers the server and cannot create tasks."
    : `Account ${created.account} (#${created.accountId}), balance ${created.balance}.`;
  $("#key-dialog").showModal();
  $("#new-key").select();
  pages.accounts.load();
  pages.keys.load();
}

// --- Server -------------------------------------------------------------------------------------------------

function showServerFacts(server) {
  session.server = server;
  const facts = $("#server-facts");
  facts.textContent = `version ${server.version}${server.sandbox ? " · sandbox" : ""}`;
  facts.hidden = false;
  $("#banner-sandbox").hidden = !server.sandbox;
  $("#banner-maintenance").hidden = !server.maintenance;
  $("#maintenance-switch").checked = server.maintenance;
  for (const select of document.querySelectorAll("select[data-models]")) {
    const chosen = select.value;
    select.replaceChildren(h("option", { value: "" }, "any"), ...server.models.map((model) => h("option", { value: model.id }, model.id)));
    select.value = chosen;
  }
}

function renderServer(server) {
  showServerFacts(server);
  $("#server-version").replaceChildren("Safelight ", mono(server.version),
    server.sandbox ? " · every route is the sandbox (previews, not generations)" : "");
  const tbody = $("#models-table tbody");
  tbody.replaceChildren(...server.models.map((model) => h("tr", { "data-model": model.id },
    h("td", {}, model.id, model.title ? h("div", { class: "muted" }, model.title) : ""),
    h("td", {}, h("label", { class: "switch" },
      h("input", { type: "checkbox", role: "switch", checked: model.enabled, "aria-label": `${model.id} enabled`,
        onchange: (event) => toggleModel(model, event.currentTarget) }),
      h("span", { "aria-hidden": "true" }, model.enabled ? "enabled" : "disabled"))),
    h("td", {}, model.route.length ? model.route.join(" → ") : muted("no route")))));
  $("#server-passthrough").replaceChildren(server.passThrough
    ? h("span", {}, "Other models pass through to: ", server.passThrough.route.join(" → "))
    : muted("No pass-through: models outside the catalog are refused."));
  $("#server-backends").replaceChildren(...server.backends.map((backend) =>
    h("li", {}, h("strong", {}, backend.name), ` (${backend.type})`)));
}

async function loadServer() {
  try {
    renderServer(await api("GET", "/api/admin/server"));
  } catch (error) {
    announceError(error, "Loading the server's settings");
  }
}

async function toggleModel(model, input) {
  const enabled = input.checked;
  if (!enabled) {
    const confirmed = await confirmAction("Disable the model?",
      `createTask refuses ${model.id} (code 505) until it is enabled again; tasks already created still run.`,
      "Disable model");
    if (!confirmed) {
      input.checked = true;
      return;
    }
  }
  const result = await act(input, `${enabled ? "Enabling" : "Disabling"} ${model.id}`,
    () => api("POST", "/api/admin/models", { body: { model: model.id, enabled } }),
    `${model.id} ${enabled ? "enabled" : "disabled"}.`);
  if (result === undefined) input.checked = !enabled;
  loadServer();
}

async function toggleMaintenance(event) {
  const input = event.currentTarget;
  const on = input.checked;
  if (on) {
    const confirmed = await confirmAction("Turn maintenance on?",
      "createTask refuses every new task (code 455) until maintenance is turned off; running tasks finish.",
      "Turn maintenance on");
    if (!confirmed) {
      input.checked = false;
      return;
    }
  }
  const result = await act(input, `Turning maintenance ${on ? "on" : "off"}`,
    () => api("POST", "/api/admin/maintenance", { body: { on } }), `Maintenance is ${on ? "on" : "off"}.`);
  if (result === undefined) input.checked = !on;
  loadServer();
}

// --- Audit ----------------------------------------------------------------------------------------------------

function auditRow(entry) {
  const detail = entry.detail && Object.keys(entry.detail).length ? JSON.stringify(entry.detail) : "";
  return h("tr", {},
    h("td", {}, time(entry.at)),
    h("td", {}, entry.actor),
    h("td", {}, mono(entry.action)),
    h("td", { class: "wrap" }, entry.target || muted("–")),
    h("td", { class: "wrap mono" }, detail));
}

// --- tabs, refresh, sign-in ------------------------------------------------------------------------------------

const pages = {};

const TABS = {
  queue: () => loadQueue(),
  failures: () => pages.failures.load(),
  tasks: () => pages.tasks.load(true, formQuery($("#tasks-filter"))),
  callbacks: () => loadCallbacks(),
  accounts: () => loadAccountsPanel(),
  server: () => loadServer(),
  audit: () => pages.audit.load(true, formQuery($("#audit-filter"))),
};

let currentTab = null;

function selectTab(name, { focus = false } = {}) {
  if (!(name in TABS)) name = "queue";
  currentTab = name;
  for (const tab of document.querySelectorAll('[role="tab"]')) {
    const selected = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    if (selected && focus) tab.focus();
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !selected;
  }
  if (window.location.hash !== `#${name}`) window.history.replaceState(null, "", `#${name}`);
  TABS[name]();
}

function wireTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  for (const tab of tabs) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
  $("#tabs").addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    if (index < 0) return;
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = tabs[(moves[event.key] + tabs.length) % tabs.length];
    selectTab(next.dataset.tab, { focus: true });
  });
  window.addEventListener("hashchange", () => {
    const name = window.location.hash.slice(1);
    if (session.key && name !== currentTab && name in TABS) selectTab(name);
  });
}

let queueTimer = null;

function startQueueRefresh() {
  clearInterval(queueTimer);
  queueTimer = setInterval(() => {
    if (currentTab === "queue" && $("#queue-auto").checked && !document.hidden && session.key) loadQueue();
  }, QUEUE_REFRESH_MS);
}

function showConsole(server) {
  $("#sign-in").hidden = true;
  $("#console").hidden = false;
  $("#signed-in").hidden = false;
  $("#signed-in-as").replaceChildren("Signed in with ", mono(`${session.key.slice(0, 10)}…`));
  showServerFacts(server);
  const wanted = window.location.hash.slice(1);
  selectTab(wanted in TABS ? wanted : "queue");
  startQueueRefresh();
}

function signOut(message = "") {
  session.key = null;
  session.server = null;
  clearInterval(queueTimer);
  window.localStorage.removeItem(KEY_STORAGE);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("#console").hidden = true;
  $("#signed-in").hidden = true;
  $("#server-facts").hidden = true;
  $("#sign-in").hidden = false;
  const error = $("#sign-in-error");
  error.textContent = message;
  error.hidden = !message;
  $("#admin-key").value = "";
  $("#admin-key").focus();
}

/** What to tell the operator when a key is refused at sign-in. */
function signInProblem(error) {
  if (error.status === 403) {
    return `That is a user key, not an admin key: user keys cannot administer the server. ` +
      `Make an admin key with \`safelight keys create NAME --admin\`. (The server said: ${error.message})`;
  }
  if (error.status === 401) return `The admin key was refused: ${error.message}`;
  return `Could not sign in: ${error.message}`;
}

async function signIn(key, { remember }) {
  try {
    const server = await api("GET", "/api/admin/server", { key });
    session.key = key;
    if (remember) window.localStorage.setItem(KEY_STORAGE, key);
    showConsole(server);
    return true;
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      signOut(signInProblem(error));
    } else {
      // The server did not answer properly: keep a remembered key for the next try.
      const problem = $("#sign-in-error");
      problem.textContent = signInProblem(error);
      problem.hidden = false;
    }
    return false;
  }
}

function wireForms() {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#admin-key").value.trim();
    if (!key) {
      const error = $("#sign-in-error");
      error.textContent = "Enter an admin key (it starts with sla_).";
      error.hidden = false;
      return;
    }
    const button = event.currentTarget.querySelector("button");
    button.disabled = true;
    try {
      await signIn(key, { remember: true });
    } finally {
      button.disabled = false;
    }
  });
  $("#sign-out").addEventListener("click", () => signOut("Signed out. The key was removed from this browser."));

  $("#queue-refresh").addEventListener("click", loadQueue);
  $("#failures-refresh").addEventListener("click", () => pages.failures.load());
  $("#accounts-refresh").addEventListener("click", loadAccountsPanel);
  $("#server-refresh").addEventListener("click", loadServer);
  $("#tasks-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    pages.tasks.load(true, formQuery(event.currentTarget));
  });
  $("#callbacks-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCallbacks();
  });
  $("#ledger-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    pages.ledger.load(true, formQuery(event.currentTarget));
  });
  $("#audit-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    pages.audit.load(true, formQuery(event.currentTarget));
  });
  $("#create-key").addEventListener("submit", createKey);
  $("#create-key").elements.admin.addEventListener("change", (event) => {
    const form = event.currentTarget.form;
    form.elements.account.disabled = event.currentTarget.checked;
    form.elements.credits.disabled = event.currentTarget.checked;
  });
  $("#maintenance-switch").addEventListener("change", toggleMaintenance);
  dialogForm("#limits-form", "#limits-error", saveLimits);
  dialogForm("#credits-form", "#credits-error", saveCredits);
  $("#copy-key").addEventListener("click", async () => {
    const value = $("#new-key").value;
    try {
      await navigator.clipboard.writeText(value);
      announce("Key copied to the clipboard.");
    } catch {
      $("#new-key").select();
      announce("Select the key and copy it (the clipboard is not available here).", "error");
    }
  });
  // A revealed secret is cleared from the page once its dialog closes.
  $("#key-dialog").addEventListener("close", () => { $("#new-key").value = ""; });
  $("#secret-dialog").addEventListener("close", () => { $("#new-secret").value = ""; });
}

function main() {
  pages.failures = new PagedTable({ table: "#failures-table", more: "#failures-more", path: "/api/admin/tasks",
    row: failureRow, empty: "No failed tasks." });
  pages.failures.query = { state: "fail" };
  pages.tasks = new PagedTable({ table: "#tasks-table", more: "#tasks-more", path: "/api/admin/tasks",
    row: taskRow, empty: "No tasks match." });
  pages.callbacks = new PagedTable({ table: "#callbacks-table", more: "#callbacks-more", path: "/api/admin/callbacks",
    row: deliveryRow, empty: "No callback deliveries match." });
  pages.accounts = new PagedTable({ table: "#accounts-table", more: "#accounts-more", path: "/api/admin/accounts",
    row: accountRow, empty: "No accounts yet." });
  pages.keys = new PagedTable({ table: "#keys-table", more: "#keys-more", path: "/api/admin/keys",
    row: keyRow, empty: "No keys yet." });
  pages.ledger = new PagedTable({ table: "#ledger-table", more: "#ledger-more", path: "/api/admin/ledger",
    row: ledgerRow, empty: "No ledger entries match." });
  pages.audit = new PagedTable({ table: "#audit-table", more: "#audit-more", path: "/api/admin/audit",
    row: auditRow, empty: "No audit entries match." });
  wireTabs();
  wireForms();
  document.body.dataset.ready = "true";
  const stored = window.localStorage.getItem(KEY_STORAGE);
  if (stored) signIn(stored, { remember: true });
  else $("#admin-key").focus();
}

main();
