// The operator console (/admin): a thin page over the admin JSON API (/api/admin/...).
// Everything shown comes from that API; data goes into the page as text, never as HTML.

import { $, $$, api, ApiError, clear, copyText, el, formatAge, formatTime, keys } from "/ui/common.js";

const KEY_SLOT = "admin"; // localStorage "safelight.admin.key" (common.js keys)
const QUEUE_REFRESH_MS = 3000;
const STATES = ["waiting", "queuing", "generating", "success", "fail"];
const UNFINISHED = new Set(["waiting", "queuing", "generating"]);

const session = { key: "", server: null };

// --- the API -----------------------------------------------------------------------------------------

/** An admin API call with the signed-in key (or `key`); a 401 while signed in (the key was revoked) signs out. */
async function admin(path, { method = "GET", query = null, body = undefined, key = undefined } = {}) {
  try {
    return await api(path, { key: key ?? session.key, method, query, body });
  } catch (error) {
    if (!(error instanceof ApiError)) throw new ApiError(0, `the server did not answer (${error.message})`, null, 0);
    if (error.code === 401 && key === undefined && session.key) signOut(`Signed out: ${error.msg}`);
    throw error;
  }
}

const enc = encodeURIComponent;

// --- small DOM helpers ---------------------------------------------------------------------------------

const muted = (text) => el("span", { class: "muted" }, text);
const mono = (text) => el("code", {}, text);
const stateBadge = (state) => el("span", { class: `badge state-${state}` }, state);

function time(ms) {
  if (ms === null || ms === undefined || ms === "") return muted("–");
  return el("time", { datetime: new Date(Number(ms)).toISOString() }, formatTime(ms));
}

function button(label, onClick, { kind = "", ariaLabel = null } = {}) {
  return el("button", { type: "button", class: `button small ${kind}`.trim(), "aria-label": ariaLabel,
                        on: { click: onClick } }, label);
}

function emptyRow(tbody, text) {
  const columns = tbody.closest("table").querySelectorAll("thead th").length;
  tbody.append(el("tr", { class: "empty" }, el("td", { colspan: columns }, text)));
}

function taskLink(taskId) {
  return el("button", { type: "button", class: "link-button mono", dataset: { task: taskId },
                        "aria-label": `Open task ${taskId}`, on: { click: () => openRecord(taskId) } }, taskId);
}

function formQuery(form) {
  const query = {};
  for (const [name, value] of new FormData(form)) if (String(value).trim()) query[name] = String(value).trim();
  return query;
}

// --- announcements, confirmation, actions ----------------------------------------------------------------

let announceTimer = null;

/** Say the result of an action in the live region (errors stay until the next message). */
function announce(text, kind = "ok") {
  const region = $("#announce");
  region.textContent = "";
  region.className = `announce notice ${kind}`;
  // Set after clearing, so a repeated message is announced again.
  window.requestAnimationFrame(() => { region.textContent = text; });
  clearTimeout(announceTimer);
  if (kind !== "error") announceTimer = setTimeout(() => { region.textContent = ""; }, 10000);
}

function announceError(error, what) {
  announce(`${what} failed: ${error instanceof ApiError ? error.msg || error.message : String(error)}`, "error");
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

/** Run `action` (an API call) with `control` disabled, announcing success or the API's error.
 *  Resolves to the action's result, or undefined when it failed. */
async function act(control, what, action, success) {
  if (control) control.disabled = true;
  try {
    const result = await action();
    announce(typeof success === "function" ? success(result) : success);
    return result;
  } catch (error) {
    announceError(error, what);
    return undefined;
  } finally {
    if (control) control.disabled = false;
  }
}

// --- paged tables ----------------------------------------------------------------------------------------

/** A table filled from a list route ({items, nextCursor}), with a "Load more" button. */
class PagedTable {
  constructor({ table, more, path, row, empty, query = {} }) {
    this.tbody = $(`${table} tbody`);
    this.more = $(more);
    this.path = path;
    this.row = row;
    this.empty = empty;
    this.query = query;
    this.cursor = null;
    this.generation = 0;
    this.more.addEventListener("click", () => this.load(false));
  }

  async load(reset = true, query = undefined) {
    if (query !== undefined) this.query = query;
    const generation = ++this.generation;
    this.more.disabled = true;
    try {
      const data = await admin(this.path, { query: { ...this.query, cursor: reset ? null : this.cursor } });
      if (generation !== this.generation) return; // a newer load replaced this one
      if (reset) this.tbody.replaceChildren();
      for (const item of data.items) this.tbody.append(this.row(item));
      if (reset && data.items.length === 0) emptyRow(this.tbody, this.empty);
      this.cursor = data.nextCursor;
      this.more.hidden = !data.nextCursor;
    } catch (error) {
      if (generation !== this.generation) return;
      if (reset) {
        this.tbody.replaceChildren();
        emptyRow(this.tbody, `Could not load: ${error.msg || error.message}`);
      }
      announceError(error, "Loading");
    } finally {
      this.more.disabled = false;
    }
  }
}

const pages = {};

// --- Queue --------------------------------------------------------------------------------------------------

function breakerList(breakers) {
  const entries = Object.entries(breakers || {});
  if (entries.length === 0) return muted("none");
  return el("ul", { class: "plain-list" }, entries.map(([backend, breaker]) => {
    const parts = [`${backend}: ${breaker.state}`];
    if (breaker.failures) parts.push(`${breaker.failures} failures`);
    if (breaker.reason) parts.push(breaker.reason);
    return el("li", { class: breaker.state === "closed" ? null : "breaker-open" }, parts.join(" · "),
              breaker.retryAt ? [" · retry at ", time(breaker.retryAt)] : null);
  }));
}

/** A worker's models: a short list as it is, a long one folded under its count. */
function modelList(models) {
  if (models.length === 0) return muted("every model");
  if (models.length <= 4) return models.join(", ");
  return el("details", {}, el("summary", {}, `${models.length} models`), models.join(", "));
}

async function loadQueue() {
  let queue;
  try {
    queue = await admin("/api/admin/queue");
  } catch (error) {
    $("#queue-updated").textContent = `Could not load the queue: ${error.msg || error.message}`;
    return;
  }
  clear($("#queue-states"), ...STATES.map((state) =>
    el("div", { class: `stat state-${state}`, dataset: { state } },
       el("dt", {}, state), el("dd", {}, String(queue.states[state] ?? 0)))));

  const oldest = queue.oldestWaiting;
  clear($("#queue-oldest"), oldest
    ? el("span", {}, el("strong", { id: "oldest-age" }, formatAge(oldest.ageMs)), ` (${oldest.model}) `,
         taskLink(oldest.taskId))
    : "No task is waiting.");
  clear($("#queue-callbacks"), `${queue.callbacks.pending} pending, `,
    el("span", { class: queue.callbacks.failed ? "warn-text" : null }, `${queue.callbacks.failed} given up`));

  const models = $("#queue-models tbody");
  clear(models, ...queue.unfinishedByModel.map((entry) => el("tr", {},
    el("td", {}, entry.model), el("td", {}, stateBadge(entry.state)), el("td", { class: "num" }, String(entry.count)))));
  if (queue.unfinishedByModel.length === 0) emptyRow(models, "No unfinished tasks.");

  const workers = $("#queue-workers tbody");
  clear(workers, ...queue.workers.map((worker) => el("tr", { dataset: { worker: worker.id } },
    el("td", {}, el("span", { class: "mono" }, worker.id), el("br"), muted(`${worker.host} · pid ${worker.pid}`)),
    el("td", { class: "wrap" }, modelList(worker.models)),
    el("td", { class: "num" }, String(worker.inFlight)),
    el("td", {}, breakerList(worker.breakers)),
    el("td", {}, time(worker.startedAt)),
    el("td", {}, time(worker.lastSeen)))));
  if (queue.workers.length === 0) emptyRow(workers, "No live workers: tasks wait until one starts.");

  clear($("#queue-updated"), "Updated ", time(Date.now()));
}

// --- a task's record ------------------------------------------------------------------------------------------

function attemptsList(attempts) {
  if (!attempts || attempts.length === 0) return muted("none");
  return el("ol", { class: "attempts" }, attempts.map((attempt) => el("li", {},
    el("strong", {}, attempt.backend), ` ${attempt.outcome}`, attempt.failCode ? ` (${attempt.failCode})` : null,
    attempt.detail ? muted(` ${attempt.detail}`) : null)));
}

function deliveryLog(log) {
  if (!log || log.length === 0) return muted("no attempts yet");
  return el("ol", { class: "attempts" }, log.map((attempt) => el("li", {},
    time(attempt.at), " · ", attempt.statusCode ? `HTTP ${attempt.statusCode}` : "no answer",
    attempt.latencyMs !== null && attempt.latencyMs !== undefined ? ` · ${attempt.latencyMs} ms` : null,
    attempt.error ? el("span", { class: "error-text" }, ` · ${attempt.error}`) : null)));
}

function facts(pairs) {
  return el("dl", { class: "facts" }, pairs.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
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
  return el("ul", { class: "plain-list" }, urls.map((url, index) =>
    el("li", {}, el("a", { href: url, target: "_blank", rel: "noopener" }, `Result ${index + 1}`))));
}

async function openRecord(taskId) {
  const dialog = $("#record-dialog");
  const body = $("#record-body");
  $("#record-title").textContent = `Task ${taskId}`;
  clear(body, muted("Loading…"));
  if (!dialog.open) dialog.showModal();
  let detail;
  try {
    detail = await admin(`/api/admin/tasks/${enc(taskId)}`);
  } catch (error) {
    clear(body, el("p", { class: "notice error", role: "alert" }, `Could not load the task: ${error.msg || error.message}`));
    return;
  }
  const { task, record, callbacks } = detail;
  clear(body,
    facts([
      ["State", stateBadge(task.state)],
      ["Model", task.model],
      ["Account", `${task.account} (#${task.accountId})`],
      ["Created", time(task.createTime)],
      ["Updated", time(task.updateTime)],
      ["Completed", time(task.completeTime)],
      ["Progress", `${task.progress ?? 0} %`],
      ["Backend", task.backend || muted("none")],
      ["Credits", `${task.creditsConsumed ?? 0} consumed, ${task.creditsReserved ?? 0} reserved`],
      ["failCode", task.failCode || muted("–")],
      ["failMsg", task.failMsg ? el("span", { class: "error-text", id: "record-fail-msg" }, task.failMsg) : muted("–")],
      ["Callback URL", task.callBackUrl || muted("none")],
      ["Results", resultLinks(record)],
    ]),
    el("h3", {}, "Backend attempts"), attemptsList(task.backendAttempts),
    el("h3", {}, "Callback deliveries"),
    callbacks.length === 0 ? muted("none") : el("ul", { class: "plain-list" }, callbacks.map((delivery) => el("li", {},
      `#${delivery.id} ${delivery.status === "failed" ? "given up" : delivery.status}, ${delivery.attempts} attempts, `,
      mono(delivery.url), deliveryLog(delivery.log)))),
    el("details", {}, el("summary", {}, "The record as its owner sees it (recordInfo)"),
       el("pre", { class: "json" }, JSON.stringify(record, null, 2))),
    UNFINISHED.has(task.state)
      ? el("div", { class: "row dialog-actions" }, button("Cancel this task", async (event) => {
        if (await cancelTask(task.taskId, event.currentTarget)) openRecord(task.taskId);
      }, { kind: "danger" }))
      : null);
}

async function cancelTask(taskId, control) {
  const confirmed = await confirmAction("Cancel the task?",
    `Task ${taskId} will fail with failCode 499; its reserved credits are refunded and its callback is sent.`,
    "Cancel task");
  if (!confirmed) return false;
  const result = await act(control, "Cancelling the task",
    () => admin(`/api/admin/tasks/${enc(taskId)}/cancel`, { method: "POST" }), `Task ${taskId} cancelled.`);
  return result !== undefined;
}

// --- Failures and Tasks ------------------------------------------------------------------------------------------

function failureRow(task) {
  return el("tr", { dataset: { taskId: task.taskId } },
    el("td", {}, taskLink(task.taskId)),
    el("td", {}, task.model),
    el("td", {}, task.account),
    el("td", {}, task.failCode || muted("–")),
    el("td", { class: "wrap" }, task.failMsg || muted("–")),
    el("td", { class: "wrap" }, attemptsList(task.backendAttempts)),
    el("td", {}, time(task.completeTime || task.updateTime)));
}

function taskRow(task) {
  const credits = task.state === "success" ? task.creditsConsumed : task.creditsReserved;
  return el("tr", { dataset: { taskId: task.taskId } },
    el("td", {}, taskLink(task.taskId)),
    el("td", {}, task.model),
    el("td", {}, stateBadge(task.state)),
    el("td", {}, task.account),
    el("td", { class: "num" }, `${task.progress ?? 0} %`),
    el("td", {}, task.backend || muted("–")),
    el("td", { class: "num" }, String(credits ?? 0)),
    el("td", {}, time(task.createTime)),
    el("td", {}, UNFINISHED.has(task.state)
      ? button("Cancel", async (event) => {
        if (await cancelTask(task.taskId, event.currentTarget)) pages.tasks.load();
      }, { kind: "danger", ariaLabel: `Cancel task ${task.taskId}` })
      : null));
}

// --- Callbacks -------------------------------------------------------------------------------------------------------

const deliveryStatus = (status) => (status === "failed" ? "given up" : status);

function deliveryRow(delivery) {
  const log = delivery.log || [];
  return el("tr", { dataset: { deliveryId: delivery.id, taskId: delivery.taskId } },
    el("td", { class: "mono" }, `#${delivery.id}`),
    el("td", {}, taskLink(delivery.taskId)),
    el("td", {}, delivery.account),
    el("td", { class: "wrap mono" }, delivery.url),
    el("td", {}, el("span", { class: `badge delivery-${delivery.status}` }, deliveryStatus(delivery.status))),
    el("td", { class: "num" }, String(delivery.attempts)),
    el("td", {}, delivery.status === "delivered" ? time(delivery.deliveredAt)
      : delivery.status === "pending" ? time(delivery.nextAttemptAt) : muted("–")),
    el("td", { class: "wrap" },
       log.length ? el("details", {}, el("summary", {}, `${log.length} attempt${log.length === 1 ? "" : "s"}`),
                       deliveryLog(log)) : muted("none"),
       delivery.lastError ? el("div", { class: "error-text" }, delivery.lastError) : null),
    el("td", {}, button("Redeliver", (event) => redeliver(delivery, event.currentTarget),
                        { ariaLabel: `Redeliver callback #${delivery.id} of task ${delivery.taskId}` })));
}

async function redeliver(delivery, control) {
  const fresh = await act(control, "Redelivering the callback",
    () => admin(`/api/admin/callbacks/${enc(delivery.id)}/redeliver`, { method: "POST" }),
    (created) => `The callback of task ${delivery.taskId} is queued again as delivery #${created.id}.`);
  if (fresh !== undefined) loadCallbacks();
}

/** The default view (pending and given up) joins two lists; the other views page through one. */
async function loadCallbacks() {
  const query = formQuery($("#callbacks-filter"));
  if (query.status !== "attention") {
    await pages.callbacks.load(true, query);
    return;
  }
  const table = pages.callbacks;
  const generation = ++table.generation;
  table.more.hidden = true;
  try {
    const lists = await Promise.all(["pending", "failed"].map((status) =>
      admin("/api/admin/callbacks", { query: { ...query, status, limit: 100 } })));
    if (generation !== table.generation) return;
    const items = lists.flatMap((list) => list.items).sort((a, b) => b.createdAt - a.createdAt || b.id - a.id);
    clear(table.tbody, ...items.map(deliveryRow));
    if (items.length === 0) emptyRow(table.tbody, "No callback is pending or given up.");
  } catch (error) {
    if (generation !== table.generation) return;
    table.tbody.replaceChildren();
    emptyRow(table.tbody, `Could not load: ${error.msg || error.message}`);
    announceError(error, "Loading the callbacks");
  }
}

// --- Accounts, keys, ledger -------------------------------------------------------------------------------------------

function accountRow(account) {
  return el("tr", { dataset: { account: account.name } },
    el("td", {}, account.name, " ", muted(`#${account.id}`)),
    el("td", { class: "num balance" }, String(account.balance)),
    el("td", { class: "num" }, String(account.keys)),
    el("td", { class: "num" }, String(account.unfinished)),
    el("td", {}, time(account.createdAt)),
    el("td", {}, el("div", { class: "actions" },
      button("Add credits", () => openCredits(account), { ariaLabel: `Add credits to ${account.name}` }),
      button("Rotate webhook secret", (event) => rotateSecret(account, event.currentTarget),
             { kind: "quiet", ariaLabel: `Rotate the webhook secret of ${account.name}` }),
      button("Ledger", () => showLedger(account.name), { kind: "quiet", ariaLabel: `Show the ledger of ${account.name}` }))));
}

function capsText(key) {
  const limits = key.limits || {};
  const caps = ["hour", "day", "total"].filter((period) => limits[period] !== null && limits[period] !== undefined)
    .map((period) => `${period} ≤ ${limits[period]}`);
  return caps.length ? caps.join(" · ") : muted("no caps");
}

function keyRow(key) {
  const revoked = Boolean(key.revokedAt);
  const label = `${key.name} (${key.prefix})`;
  const usage = key.usage ? `hour ${key.usage.hour} · day ${key.usage.day} · total ${key.usage.total}` : "–";
  return el("tr", { dataset: { keyId: key.id, keyName: key.name }, class: revoked ? "revoked" : null },
    el("td", {}, key.name, " ", mono(key.prefix)),
    el("td", {}, key.admin ? el("span", { class: "badge admin" }, "admin key") : key.account),
    el("td", { class: "caps compact" }, key.admin ? muted("–") : capsText(key)),
    el("td", { class: "compact" }, key.admin ? muted("–") : usage),
    el("td", { class: "compact ips" }, key.admin ? muted("–") : key.allowedIps ? key.allowedIps.join(", ") : muted("any address")),
    el("td", {}, time(key.createdAt)),
    el("td", { class: "status" }, revoked ? el("span", {}, "revoked ", time(key.revokedAt)) : el("span", { class: "badge live" }, "live")),
    el("td", {}, el("div", { class: "actions" },
      !key.admin && !revoked ? button("Limits", () => openLimits(key), { ariaLabel: `Set the limits of key ${label}` }) : null,
      !revoked ? button("Revoke", (event) => revokeKey(key, event.currentTarget),
                        { kind: "danger", ariaLabel: `Revoke key ${label}` }) : null)));
}

function ledgerRow(entry) {
  return el("tr", {},
    el("td", {}, time(entry.createdAt)),
    el("td", {}, entry.account),
    el("td", {}, entry.kind),
    el("td", { class: `num ${entry.amount < 0 ? "debit" : "credit"}` }, entry.amount > 0 ? `+${entry.amount}` : String(entry.amount)),
    el("td", { class: "num" }, String(entry.balanceAfter)),
    el("td", {}, entry.taskId ? taskLink(entry.taskId) : muted("–")),
    el("td", { class: "wrap" }, entry.note || ""));
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
  $("#ledger-title").focus();
}

async function revokeKey(key, control) {
  const confirmed = await confirmAction("Revoke the key?",
    `Key ${key.name} (${key.prefix}) stops working within 2 seconds: requests with it get code 401. ` +
    "A revoked key cannot be restored.", "Revoke key");
  if (!confirmed) return;
  const result = await act(control, "Revoking the key",
    () => admin(`/api/admin/keys/${enc(key.id)}/revoke`, { method: "POST" }), `Key ${key.name} (${key.prefix}) revoked.`);
  if (result !== undefined) {
    pages.keys.load();
    pages.accounts.load();
  }
}

async function rotateSecret(account, control) {
  const confirmed = await confirmAction("Rotate the webhook secret?",
    `Callbacks of ${account.name} are signed with a new secret from now on; receivers that check signatures ` +
    "with the old one refuse them until they are given the new one.", "Rotate secret");
  if (!confirmed) return;
  const result = await act(control, "Rotating the webhook secret",
    () => admin(`/api/admin/accounts/${enc(account.name)}/webhook-secret`, { method: "POST" }),
    `The webhook secret of ${account.name} was rotated.`);
  if (result !== undefined) {
    $("#new-secret").value = result.webhookSecret;
    $("#secret-dialog").showModal();
  }
}

/** A dialog's form whose "save" button runs `save(formData)` and closes the dialog only when it succeeds. */
function dialogForm(formSelector, errorSelector, save) {
  const form = $(formSelector);
  const problem = $(errorSelector);
  form.addEventListener("submit", async (event) => {
    if (event.submitter && event.submitter.value === "cancel") return; // closes as a dialog form does
    event.preventDefault();
    problem.hidden = true;
    const saveButton = form.querySelector('[value="save"]');
    saveButton.disabled = true;
    try {
      await save(new FormData(form));
      form.closest("dialog").close("save");
    } catch (error) {
      problem.textContent = error.msg || error.message;
      problem.hidden = false;
      announceError(error, "Saving");
    } finally {
      saveButton.disabled = false;
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

function capOrNull(value, label) {
  const text = String(value ?? "").trim();
  if (!text) return null;
  if (!/^\d+$/.test(text) || Number(text) < 1) {
    throw new ApiError(400, `${label} must be a whole number of credits >= 1, or empty for no cap; got '${text}'`);
  }
  return Number(text);
}

async function saveLimits(data) {
  const addresses = String(data.get("allowedIps")).split(/[\s,]+/).filter(Boolean);
  const body = {
    hour: capOrNull(data.get("hour"), "Per rolling hour"),
    day: capOrNull(data.get("day"), "Per rolling day"),
    total: capOrNull(data.get("total"), "In total"),
    allowedIps: addresses.length ? addresses : null,
  };
  const key = limitsKey;
  await admin(`/api/admin/keys/${enc(key.id)}/limits`, { method: "PUT", body });
  announce(`Limits of key ${key.name} (${key.prefix}) saved.`);
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
    throw new ApiError(400, `Amount must be a whole number other than 0 (a negative one deducts); got '${text}'`);
  }
  const account = creditsAccount;
  const result = await admin(`/api/admin/accounts/${enc(account.name)}/credits`,
    { method: "POST", body: { amount: Number(text), note: String(data.get("note")) } });
  announce(`${account.name}: the balance is now ${result.balance} credits.`);
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
  const isAdmin = form.elements.admin.checked;
  const credits = form.elements.credits.value.trim();
  if (!isAdmin && credits && !/^\d+$/.test(credits)) {
    announce(`Creating the key failed: credits must be a whole number >= 0; got '${credits}'.`, "error");
    form.elements.credits.focus();
    return;
  }
  const body = isAdmin ? { name, admin: true }
    : { name, account: form.elements.account.value.trim() || null, credits: Number(credits || 0), admin: false };
  const created = await act(form.querySelector('button[type="submit"]'), "Creating the key",
    () => admin("/api/admin/keys", { method: "POST", body }),
    (result) => `${result.admin ? "Admin key" : "Key"} ${name} (${result.prefix}) created.`);
  if (created === undefined) return;
  form.reset();
  setAdminToggle(form);
  $("#new-key").value = created.key;
  $("#new-key-facts").textContent = created.admin
    ? "An admin key: it signs in to this console and the admin API, and cannot create tasks."
    : `Account ${created.account} (#${created.accountId}), balance ${created.balance} credits.`;
  $("#key-dialog").showModal();
  $("#new-key").select();
  pages.accounts.load();
  pages.keys.load();
}

function setAdminToggle(form) {
  const isAdmin = form.elements.admin.checked;
  form.elements.account.disabled = isAdmin;
  form.elements.credits.disabled = isAdmin;
}

// --- Server ------------------------------------------------------------------------------------------------------------

function showServerFacts(server) {
  session.server = server;
  const factsLine = $("#server-facts");
  factsLine.textContent = `version ${server.version}${server.sandbox ? " · sandbox" : ""}`;
  factsLine.hidden = false;
  $("#banner-sandbox").hidden = !server.sandbox;
  $("#banner-maintenance").hidden = !server.maintenance;
  $("#maintenance-switch").checked = server.maintenance;
  for (const select of $$("select[data-models]")) {
    const chosen = select.value;
    clear(select, el("option", { value: "" }, "any"),
      ...server.models.map((model) => el("option", { value: model.id }, model.id)));
    select.value = chosen;
  }
}

function modelRow(model) {
  const id = `model-enabled-${model.id.replace(/[^A-Za-z0-9_-]/g, "-")}`;
  return el("tr", { dataset: { model: model.id } },
    el("td", {}, mono(model.id), model.title ? el("div", { class: "muted small" }, model.title) : null),
    el("td", {}, el("div", { class: "switch-row" },
      el("input", { type: "checkbox", role: "switch", class: "switch", id, checked: model.enabled,
                    on: { change: (event) => toggleModel(model, event.currentTarget) } }),
      el("label", { for: id }, el("span", { class: "visually-hidden" }, `${model.id} `), model.enabled ? "enabled" : "disabled"))),
    el("td", {}, model.route.length ? model.route.join(" → ") : muted("no route")));
}

async function loadServer() {
  let server;
  try {
    server = await admin("/api/admin/server");
  } catch (error) {
    announceError(error, "Loading the server's settings");
    return;
  }
  showServerFacts(server);
  clear($("#server-version"), "Safelight ", mono(server.version),
    server.sandbox ? " · every model runs on the sandbox (previews, not generations)" : null);
  clear($("#models-table tbody"), ...server.models.map(modelRow));
  clear($("#server-passthrough"), server.passThrough
    ? `Models outside the catalog pass through to: ${server.passThrough.route.join(" → ")}`
    : "No pass-through: a model outside the catalog is refused.");
  clear($("#server-backends"), ...server.backends.map((backend) =>
    el("li", {}, el("strong", {}, backend.name), ` (${backend.type})`)));
}

async function toggleModel(model, input) {
  const enabled = input.checked;
  if (!enabled) {
    const confirmed = await confirmAction("Disable the model?",
      `createTask refuses ${model.id} (code 505) until it is enabled again; its tasks already created still run.`,
      "Disable model");
    if (!confirmed) {
      input.checked = true;
      return;
    }
  }
  await act(input, `${enabled ? "Enabling" : "Disabling"} ${model.id}`,
    () => admin("/api/admin/models", { method: "POST", body: { model: model.id, enabled } }),
    `${model.id} is ${enabled ? "enabled" : "disabled"}.`);
  loadServer();
}

async function toggleMaintenance(event) {
  const input = event.currentTarget;
  const on = input.checked;
  if (on) {
    const confirmed = await confirmAction("Turn maintenance on?",
      "createTask refuses every new task (code 455) until maintenance is turned off; tasks already created still run.",
      "Turn maintenance on");
    if (!confirmed) {
      input.checked = false;
      return;
    }
  }
  await act(input, `Turning maintenance ${on ? "on" : "off"}`,
    () => admin("/api/admin/maintenance", { method: "POST", body: { on } }), `Maintenance is ${on ? "on" : "off"}.`);
  loadServer();
}

// --- Audit ---------------------------------------------------------------------------------------------------------------

function auditRow(entry) {
  const detail = entry.detail && Object.keys(entry.detail).length ? JSON.stringify(entry.detail) : "";
  return el("tr", { dataset: { action: entry.action } },
    el("td", {}, time(entry.at)),
    el("td", {}, entry.actor),
    el("td", {}, mono(entry.action)),
    el("td", { class: "wrap" }, entry.target || muted("–")),
    el("td", { class: "wrap mono" }, detail));
}

// --- tabs, refresh, sign-in -------------------------------------------------------------------------------------------------

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
  for (const tab of $$('[role="tab"]')) {
    const selected = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    if (selected && focus) tab.focus();
    if (selected) tab.scrollIntoView({ block: "nearest", inline: "nearest" });
    $(`#${tab.getAttribute("aria-controls")}`).hidden = !selected;
  }
  if (window.location.hash !== `#${name}`) window.history.replaceState(null, "", `#${name}`);
  TABS[name]();
}

function wireTabs() {
  const tabs = $$('[role="tab"]');
  for (const tab of tabs) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
  // Arrow keys move between tabs (the tab list is one stop for Tab), as WAI-ARIA's tabs pattern has it.
  $("#tabs").addEventListener("keydown", (event) => {
    const index = tabs.indexOf(document.activeElement);
    const moves = { ArrowRight: index + 1, ArrowLeft: index - 1, Home: 0, End: tabs.length - 1 };
    if (index < 0 || !(event.key in moves)) return;
    event.preventDefault();
    selectTab(tabs[(moves[event.key] + tabs.length) % tabs.length].dataset.tab, { focus: true });
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
    if (session.key && currentTab === "queue" && $("#queue-auto").checked && !document.hidden) loadQueue();
  }, QUEUE_REFRESH_MS);
}

function showConsole(server) {
  $("#sign-in").hidden = true;
  $("#console").hidden = false;
  $("#signed-in").hidden = false;
  clear($("#signed-in-as"), "Signed in with ", mono(`${session.key.slice(0, 10)}…`));
  showServerFacts(server);
  const wanted = window.location.hash.slice(1);
  selectTab(wanted in TABS ? wanted : "queue");
  startQueueRefresh();
}

function showSignInProblem(message) {
  const problem = $("#sign-in-error");
  problem.textContent = message;
  problem.hidden = !message;
}

function signOut(message = "") {
  session.key = "";
  session.server = null;
  clearInterval(queueTimer);
  keys.forget(KEY_SLOT);
  for (const dialog of $$("dialog[open]")) dialog.close();
  $("#console").hidden = true;
  $("#signed-in").hidden = true;
  $("#server-facts").hidden = true;
  $("#sign-in").hidden = false;
  showSignInProblem(message);
  $("#admin-key").value = "";
  $("#admin-key").focus();
}

/** What to tell the operator when a key is refused at sign-in. */
function signInProblem(error) {
  if (error.code === 403) {
    return "That is a user key, not an admin key: user keys cannot administer the server. Make an admin key " +
      `with "safelight keys create --name NAME --admin". (The server said: ${error.msg})`;
  }
  if (error.code === 401) return `The admin key was refused: ${error.msg}`;
  return `Could not sign in: ${error.msg || error.message}`;
}

async function signIn(key) {
  try {
    const server = await admin("/api/admin/server", { key });
    session.key = key;
    keys.set(KEY_SLOT, key);
    showSignInProblem("");
    showConsole(server);
  } catch (error) {
    if (error.code === 401 || error.code === 403) {
      signOut(signInProblem(error));
    } else {
      showSignInProblem(signInProblem(error)); // the server is unwell: a remembered key is kept for the next try
    }
  }
}

function wireForms() {
  $("#sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#admin-key").value.trim();
    if (!key) {
      showSignInProblem("Enter an admin key (it starts with sla_).");
      return;
    }
    const submit = event.currentTarget.querySelector("button");
    submit.disabled = true;
    try {
      await signIn(key);
    } finally {
      submit.disabled = false;
    }
  });
  $("#sign-out").addEventListener("click", () => signOut("Signed out: the key was removed from this browser."));

  $("#queue-refresh").addEventListener("click", loadQueue);
  $("#failures-refresh").addEventListener("click", () => pages.failures.load());
  $("#accounts-refresh").addEventListener("click", loadAccountsPanel);
  $("#server-refresh").addEventListener("click", loadServer);
  const filters = {
    "#tasks-filter": (form) => pages.tasks.load(true, formQuery(form)),
    "#callbacks-filter": () => loadCallbacks(),
    "#ledger-filter": (form) => pages.ledger.load(true, formQuery(form)),
    "#audit-filter": (form) => pages.audit.load(true, formQuery(form)),
  };
  for (const [selector, load] of Object.entries(filters)) {
    $(selector).addEventListener("submit", (event) => {
      event.preventDefault();
      load(event.currentTarget);
    });
  }
  $("#create-key").addEventListener("submit", createKey);
  $("#create-admin").addEventListener("change", (event) => setAdminToggle(event.currentTarget.form));
  $("#maintenance-switch").addEventListener("change", toggleMaintenance);
  dialogForm("#limits-form", "#limits-error", saveLimits);
  dialogForm("#credits-form", "#credits-error", saveCredits);
  $("#copy-key").addEventListener("click", async () => {
    if (await copyText($("#new-key").value)) announce("The key is on the clipboard.");
    else announce("Copying failed: select the key and copy it.", "error");
  });
  // A revealed secret leaves the page once its dialog closes.
  $("#key-dialog").addEventListener("close", () => { $("#new-key").value = ""; });
  $("#secret-dialog").addEventListener("close", () => { $("#new-secret").value = ""; });
}

function main() {
  const table = (name, path, row, empty, query = {}) =>
    new PagedTable({ table: `#${name}-table`, more: `#${name}-more`, path, row, empty, query });
  pages.failures = table("failures", "/api/admin/tasks", failureRow, "No failed tasks.", { state: "fail" });
  pages.tasks = table("tasks", "/api/admin/tasks", taskRow, "No tasks match.");
  pages.callbacks = table("callbacks", "/api/admin/callbacks", deliveryRow, "No callback deliveries match.");
  pages.accounts = table("accounts", "/api/admin/accounts", accountRow, "No accounts yet.");
  pages.keys = table("keys", "/api/admin/keys", keyRow, "No keys yet.");
  pages.ledger = table("ledger", "/api/admin/ledger", ledgerRow, "No ledger entries match.");
  pages.audit = table("audit", "/api/admin/audit", auditRow, "No audit entries match.");
  wireTabs();
  wireForms();
  const remembered = keys.get(KEY_SLOT);
  if (remembered) signIn(remembered).finally(() => { document.body.dataset.ready = "true"; });
  else {
    $("#admin-key").focus();
    document.body.dataset.ready = "true";
  }
}

main();
