// Intents: list, create, edit, delete and history; hot-path signals, suppression sources and the
// ESP binding, with choices from /intent-options and the tenant's Klaviyo catalogue. The API's
// validation errors are shown on the fields they name and summarised above the form.
import { api } from "./api.js";
import {
  h, clear, showError, showNotice, bindFieldErrors, clearFieldErrors, fmtDateTime, table,
  onTenantChange,
} from "./ui.js";

const OTHER = "__other__";
const messages = document.getElementById("messages");
const list = document.getElementById("intent-list");
const form = document.getElementById("intent-form");
const summary = document.getElementById("form-summary");
const hotRows = document.getElementById("hot-rows");
const suppressions = document.getElementById("suppressions");
const esp = document.getElementById("f-esp");
const metric = document.getElementById("f-metric");
const metricText = document.getElementById("f-metric-text");
const campaign = document.getElementById("f-campaign");
const campaignText = document.getElementById("f-campaign-text");
const catalogNote = document.getElementById("catalog-note");
const historyCard = document.getElementById("history-card");
const dialog = document.getElementById("delete-dialog");

let tenant = "";
let options = null; // /intent-options
let metrics = []; // [{id, name}]
let campaigns = []; // [{id, name, status}]
let editing = null; // the intent being edited (null: creating)
let hotSeq = 0;

const field = (name) => form.elements.namedItem(name);
const path = (...parts) => `/api/tenants/${parts.map(encodeURIComponent).join("/")}`;

function duration(seconds) {
  if (seconds === null || seconds === undefined || seconds === "") return "";
  const s = Number(seconds);
  if (!Number.isFinite(s)) return "";
  if (s % 86400 === 0) return `${s / 86400} d`;
  if (s % 3600 === 0) return `${s / 3600} h`;
  if (s % 60 === 0) return `${s / 60} min`;
  return `${s} s`;
}

// -- choices ----------------------------------------------------------------------------------

function fillSelect(select, items, { none, other, value }) {
  clear(select);
  if (none) select.append(h("option", { value: "" }, none));
  for (const item of items) select.append(h("option", { value: item.value }, item.label));
  if (other) select.append(h("option", { value: OTHER }, other));
  if (value !== undefined) select.value = value;
}

function syncOther(select, text) {
  const show = select.value === OTHER;
  text.hidden = !show;
  text.previousElementSibling.hidden = !show; // its label
}

function setChoice(select, text, value) {
  const known = [...select.options].some((o) => o.value === value && value !== OTHER);
  select.value = known ? value : (value ? OTHER : (select.options[0]?.value ?? ""));
  text.value = known ? "" : (value ?? "");
  syncOther(select, text);
}

function choiceValue(select, text) {
  const v = select.value === OTHER ? text.value.trim() : select.value;
  return v || null;
}

function renderMetricChoices() {
  fillSelect(metric, metrics.map((m) => ({ value: m.name, label: m.name })), {
    none: metrics.length ? "Choose a metric" : null, other: "Other (type its name)",
  });
  syncOther(metric, metricText);
  fillSelect(campaign, campaigns.map((c) => ({
    value: c.id, label: `${c.name} (${c.id}${c.status ? `, ${c.status}` : ""})`,
  })), { none: "No campaign", other: "Other (type its id)" });
  syncOther(campaign, campaignText);
}

function renderOptions() {
  fillSelect(esp, options.esps.map((e) => ({
    value: e.esp, label: `${e.esp} (${e.connected ? "connected" : e.status ?? "not connected"})`,
  })), { value: options.esps.find((e) => e.connected)?.esp ?? options.esps[0]?.esp });
  clear(suppressions);
  for (const name of options.suppression_sources) {
    const id = `supp-${name}`;
    suppressions.append(h("div", { class: "field check" },
      h("input", { type: "checkbox", id, value: name, dataset: { suppression: name } }),
      h("label", { for: id }, name.replaceAll("_", " "))));
  }
  const win = document.getElementById("f-window");
  win.max = String(options.max_window_seconds);
  showEspFields();
}

function showEspFields() {
  document.getElementById("klaviyo-fields").hidden = esp.value !== "klaviyo";
  document.getElementById("webhook-fields").hidden = esp.value !== "webhook";
}

async function loadChoices() {
  options = await api(path(tenant, "intent-options"));
  renderOptions();
  metrics = [];
  campaigns = [];
  const notes = [];
  const klaviyo = options.esps.find((e) => e.esp === "klaviyo");
  if (klaviyo?.connected) {
    const [m, c] = await Promise.allSettled([
      api(path(tenant, "catalog"), { query: { kind: "metric" } }),
      api(path(tenant, "catalog"), { query: { kind: "campaign" } }),
    ]);
    if (m.status === "fulfilled") {
      metrics = m.value.items;
      if (m.value.note) notes.push(m.value.note);
    } else notes.push(`Klaviyo's metrics could not be listed (${m.reason.message}): type the name.`);
    if (c.status === "fulfilled") {
      campaigns = c.value.items;
      if (!campaigns.length) notes.push("No campaigns are known yet (they are read by a backfill): type an id if needed.");
    } else notes.push(`Campaigns could not be listed (${c.reason.message}).`);
  } else {
    notes.push("This tenant has not connected Klaviyo: connect it on the Tenants page to bind intents to it.");
  }
  renderMetricChoices();
  catalogNote.hidden = !notes.length;
  catalogNote.textContent = notes.join(" ");
}

// -- hot-path rows ----------------------------------------------------------------------------

function renumberHot() {
  [...hotRows.children].forEach((row, i) => {
    row.querySelector("select").name = `hot_path_signals.${i}.event_type`;
    row.querySelector("input").name = `hot_path_signals.${i}.within_seconds`;
    row.querySelector("button").setAttribute("aria-label", `Remove signal ${i + 1}`);
  });
}

function addHot(signal = { event_type: "site_visit", within_seconds: 900 }) {
  const n = ++hotSeq;
  const type = h("select", { id: `hot-type-${n}` },
    (options?.event_types ?? [signal.event_type]).map((t) => h("option", { value: t }, t.replaceAll("_", " "))));
  type.value = signal.event_type;
  const within = h("input", {
    id: `hot-within-${n}`, type: "number", inputmode: "numeric", min: 1,
    max: options?.max_hot_path_seconds, step: 1, value: signal.within_seconds,
  });
  const row = h("div", { class: "hot-row" },
    h("div", { class: "field" }, h("label", { for: type.id }, "Signal"), type),
    h("div", { class: "field" }, h("label", { for: within.id }, "Within (seconds)"), within),
    h("div", { class: "field" }, h("button", {
      type: "button", class: "secondary", on: { click: () => {
        const next = row.nextElementSibling ?? row.previousElementSibling;
        row.remove();
        renumberHot();
        (next?.querySelector("select") ?? document.getElementById("add-hot")).focus();
      } },
    }, "Remove")));
  hotRows.append(row);
  renumberHot();
  return type;
}

// -- the form ---------------------------------------------------------------------------------

function numberOrRaw(value) {
  const v = value.trim();
  if (v === "") return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : v; // the API names a value that is not a number
}

function body() {
    const out = {
    name: field("name").value.trim(),
    description: field("description").value,
    frequency_cap_group: field("frequency_cap_group").value.trim() || null,
    latency_seconds: numberOrRaw(field("latency_seconds").value),
    hot_path_signals: [...hotRows.children].map((row) => ({
      event_type: row.querySelector("select").value,
      within_seconds: numberOrRaw(row.querySelector("input").value),
    })),
    suppression_sources: [...suppressions.querySelectorAll("input:checked")].map((c) => c.value),
  };
  const win = numberOrRaw(field("window_seconds").value);
  if (win !== null) out.window_seconds = win;
  const binding = { esp: esp.value };
  if (esp.value === "klaviyo") {
    binding.metric_name = choiceValue(metric, metricText);
    const c = choiceValue(campaign, campaignText);
    if (c) binding.campaign_id = c;
    const t = field("binding.template_id").value.trim();
    if (t) binding.template_id = t;
  } else if (esp.value === "webhook") {
    binding.event = field("binding.event").value.trim() || null;
    const batch = numberOrRaw(field("binding.max_batch").value);
    if (batch !== null) binding.max_batch = batch;
  }
  out.binding = binding;
  if (editing) out.version = editing.version;
  else out.intent_id = field("intent_id").value.trim();
  return out;
}

function labelFor(control) {
  if (control.tagName === "FIELDSET") return control.querySelector("legend")?.textContent ?? control.name;
  return document.querySelector(`label[for="${CSS.escape(control.id)}"]`)?.textContent ?? control.name;
}

function controlFor(loc) {
  const parts = (loc ?? []).filter((p) => p !== "body" && p !== "query" && p !== "path");
  for (const name of [parts.join("."), String(parts[parts.length - 1] ?? "")]) {
    if (!name) continue;
    const found = form.querySelector(`[name="${CSS.escape(name)}"]`);
    if (found) return found;
  }
  return null;
}

function showSummary(err) {
  clear(summary);
  const errors = err.errors?.length ? err.errors : [{ loc: [], msg: err.message }];
  const items = errors.map((e) => {
    const control = controlFor(e.loc);
    if (!control) return h("li", {}, e.msg);
    const row = control.closest(".hot-row");
    const where = row ? `${labelFor(control)} ${[...hotRows.children].indexOf(row) + 1}` : labelFor(control);
    return h("li", {}, h("a", { href: `#${control.id}`, on: { click: (ev) => {
      ev.preventDefault();
      (control.tagName === "FIELDSET" ? control.querySelector("input, select, button") : control)?.focus();
    } } }, where), `: ${e.msg}`);
  });
  summary.append(h("div", { class: "alert", role: "alert" },
    h("strong", {}, errors.length === 1 ? "The intent was not saved: 1 problem" : `The intent was not saved: ${errors.length} problems`),
    h("ul", {}, items)));
  summary.focus();
}

function startCreate() {
  editing = null;
  form.reset();
  clearFieldErrors(form);
  clear(summary);
  clear(hotRows);
  const id = field("intent_id");
  id.readOnly = false;
  document.getElementById("form-h").textContent = "New intent";
  document.getElementById("save").textContent = "Create intent";
  if (options) renderOptions();
  renderMetricChoices();
  updateWindowHint();
}

function startEdit(intent) {
  startCreate();
  editing = intent;
  field("intent_id").value = intent.intent_id;
  field("intent_id").readOnly = true;
  field("name").value = intent.name;
  field("description").value = intent.description;
  field("frequency_cap_group").value = intent.frequency_cap_group ?? "";
  field("window_seconds").value = intent.window_seconds;
  field("latency_seconds").value = intent.latency_seconds ?? "";
  intent.hot_path_signals.forEach((s) => addHot(s));
  suppressions.querySelectorAll("input").forEach((c) => { c.checked = intent.suppression_sources.includes(c.value); });
  const b = intent.binding;
  esp.value = b.esp;
  showEspFields();
  if (b.esp === "klaviyo") {
    setChoice(metric, metricText, b.metric_name ?? "");
    setChoice(campaign, campaignText, b.campaign_id ?? "");
    field("binding.template_id").value = b.template_id ?? "";
  } else if (b.esp === "webhook") {
    field("binding.event").value = b.event ?? "";
    field("binding.max_batch").value = b.max_batch ?? "";
  }
  updateWindowHint();
  document.getElementById("form-h").textContent = `Edit intent ${intent.intent_id}`;
  document.getElementById("save").textContent = "Save changes";
  field("name").focus();
}

function updateWindowHint() {
  const v = field("window_seconds").value;
  document.getElementById("f-window-hint").textContent = v
    ? `${duration(v)}; at most ${duration(options?.max_window_seconds ?? 1209600)}`
    : "empty: one day";
}

async function submit(ev) {
  ev.preventDefault();
  const payload = body();
  const save = document.getElementById("save");
  save.disabled = true;
  try {
    const saved = editing
      ? await api(path(tenant, "intents", editing.intent_id), { method: "PUT", body: payload })
      : await api(path(tenant, "intents"), { method: "POST", body: payload });
    const verb = editing ? `saved (version ${saved.version})` : "created";
    startCreate();
    await loadList();
    showNotice(messages, `Intent ${saved.intent_id} ${verb}.`);
  } catch (err) {
    if (err.status === 409) loadList(); // someone else changed it: show the current state
    bindFieldErrors(form, err);
    // a whole group's error goes inside its fieldset, under the legend
    form.querySelectorAll("fieldset[aria-invalid]").forEach((fs) => {
      const msg = document.getElementById(`${fs.id}-error`);
      if (msg) fs.querySelector("legend").after(msg);
    });
    showSummary(err);
  } finally {
    save.disabled = false;
  }
}

// -- the list, history and delete ----------------------------------------------------------------

function campaignName(id) {
  const c = campaigns.find((x) => x.id === id);
  return c ? `${c.name} (${id})` : id;
}

function bindingText(b) {
  if (b.esp === "klaviyo") {
    const parts = [`metric ${b.metric_name}`];
    if (b.campaign_id) parts.push(`campaign ${campaignName(b.campaign_id)}`);
    if (b.template_id) parts.push(`template ${b.template_id}`);
    return h("span", {}, h("span", { class: "badge" }, "klaviyo"), " ", parts.join(" · "));
  }
  const rest = Object.entries(b).filter(([k]) => k !== "esp").map(([k, v]) => `${k.replaceAll("_", " ")} ${v}`);
  return h("span", {}, h("span", { class: "badge" }, b.esp), " ", rest.join(" · "));
}

function actions(intent) {
  const label = intent.intent_id;
  return h("div", { class: "row" },
    h("button", { type: "button", class: "secondary", "aria-label": `Edit ${label}`, on: { click: () => startEdit(intent) } }, "Edit"),
    h("button", { type: "button", class: "secondary", "aria-label": `History of ${label}`, on: { click: (ev) => showHistory(intent, ev.currentTarget) } }, "History"),
    h("button", { type: "button", class: "danger", "aria-label": `Delete ${label}`, on: { click: (ev) => confirmDelete(intent, ev.currentTarget) } }, "Delete"));
}

let intents = [];

async function loadList() {
  try {
    intents = await api(path(tenant, "intents"));
    clear(list).append(table([
      { label: "Intent", value: (i) => h("span", {}, h("strong", {}, i.intent_id), h("div", { class: "muted" }, i.name)) },
      { label: "Window", value: (i) => `${duration(i.window_seconds)}${i.latency_seconds !== null ? `, latency ${duration(i.latency_seconds) || "0 s"}` : ""}` },
      { label: "Hot paths", value: (i) => i.hot_path_signals.map((s) => `${s.event_type} ≤ ${duration(s.within_seconds)}`).join(", ") || "-" },
      { label: "Suppressions", value: (i) => i.suppression_sources.join(", ") || "-" },
      { label: "Binding", value: (i) => bindingText(i.binding) },
      { label: "Version", value: (i) => h("span", {}, `v${i.version}`, h("div", { class: "muted" }, fmtDateTime(i.updated_at))) },
      { label: "Actions", value: actions },
    ], intents, { caption: "Intents and their ESP bindings", empty: "No intents yet: create one below." }));
  } catch (err) {
    showError(list, err);
  }
}

function show(v) {
  if (v === null || v === undefined || v === "") return "none";
  if (Array.isArray(v)) return v.length ? v.map(show).join(", ") : "none";
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k.replaceAll("_", " ")} ${show(x)}`).join(" · ");
  return String(v);
}

function changeText(name, [before, after]) {
  return h("li", {}, h("strong", {}, name.replaceAll("_", " ")), `: ${show(before)} → ${show(after)}`);
}

async function showHistory(intent, opener) {
  const box = document.getElementById("history");
  document.getElementById("history-h").textContent = `History of ${intent.intent_id}`;
  historyCard.hidden = false;
  clear(box).append(h("p", { class: "muted" }, "Loading…"));
  historyCard.dataset.opener = opener?.getAttribute("aria-label") ?? "";
  try {
    const changes = await api(path(tenant, "intents", intent.intent_id, "history"));
    clear(box).append(table([
      { label: "Version", value: (c) => `v${c.version}`, num: true },
      { label: "Change", value: (c) => c.action },
      { label: "By", value: (c) => c.actor },
      { label: "When", value: (c) => fmtDateTime(c.changed_at) },
      { label: "What", value: (c) => (Object.keys(c.changes).length
        ? h("ul", { class: "changes" }, Object.entries(c.changes).map(([k, v]) => changeText(k, v)))
        : "-") },
    ], changes, { caption: `Changes to ${intent.intent_id}, newest first`, empty: "No changes recorded." }));
  } catch (err) {
    showError(box, err);
  }
  document.getElementById("history-h").scrollIntoView({ block: "nearest" });
  document.getElementById("history-close").focus();
}

function confirmDelete(intent, opener) {
  document.getElementById("delete-id").textContent = intent.intent_id;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "delete") { opener.focus(); return; }
    try {
      await api(path(tenant, "intents", intent.intent_id), { method: "DELETE" });
      if (editing?.intent_id === intent.intent_id) startCreate();
      historyCard.hidden = true;
      await loadList();
      showNotice(messages, `Intent ${intent.intent_id} deleted.`);
      document.getElementById("new-intent").focus();
    } catch (err) {
      showError(messages, err);
    }
  };
  dialog.showModal();
}

// -- wiring ---------------------------------------------------------------------------------

form.addEventListener("submit", submit);
document.getElementById("clear-form").addEventListener("click", startCreate);
document.getElementById("new-intent").addEventListener("click", () => {
  startCreate();
  field("intent_id").focus();
});
document.getElementById("add-hot").addEventListener("click", () => addHot().focus());
document.getElementById("history-close").addEventListener("click", () => {
  historyCard.hidden = true;
  const opener = [...list.querySelectorAll("button")].find((b) => b.getAttribute("aria-label") === historyCard.dataset.opener);
  opener?.focus();
});
esp.addEventListener("change", showEspFields);
metric.addEventListener("change", () => syncOther(metric, metricText));
campaign.addEventListener("change", () => syncOther(campaign, campaignText));
field("window_seconds").addEventListener("input", updateWindowHint);

onTenantChange(async (t) => {
  tenant = t;
  document.getElementById("tenant-name").textContent = t || "no tenant";
  clear(messages);
  historyCard.hidden = true;
  if (!t) {
    clear(list).append(h("p", { class: "empty" }, "No tenants yet: add one on the Tenants page."));
    return;
  }
  options = null;
  metrics = [];
  campaigns = [];
  startCreate();
  const save = document.getElementById("save");
  save.disabled = true; // until the choices are there
  try {
    await loadChoices();
  } catch (err) {
    showError(messages, err);
  } finally {
    save.disabled = false;
  }
  await loadList();
});
