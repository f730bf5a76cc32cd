// Tenants: the brands, their Klaviyo connection and its health; add one; connect one.
import { api, apiUrl } from "./api.js";
import {
  h, clear, showError, showNotice, bindFieldErrors, clearFieldErrors, fmtInt, fmtDateTime,
  table, refreshTenants,
} from "./ui.js";

const list = document.getElementById("tenant-list");
const messages = document.getElementById("messages");
const addForm = document.getElementById("add-tenant");
const connectCard = document.getElementById("connect-card");
const connectForm = document.getElementById("connect-key");
let connecting = null;

const ZONES = ["UTC", "Europe/London", "Europe/Paris", "Europe/Berlin", "Europe/Warsaw",
  "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
  "America/Sao_Paulo", "Asia/Tokyo", "Asia/Singapore", "Asia/Kolkata", "Australia/Sydney"];
const zones = document.getElementById("zones");
ZONES.forEach((z) => zones.append(h("option", { value: z })));

function health(account) {
  if (!account) return h("span", { class: "badge" }, "not connected");
  const parts = [h("span", { class: `badge ${account.status}` }, account.status),
    " ", account.auth_kind === "oauth" ? "OAuth" : "API key"];
  if (account.account_id) parts.push(` · account ${account.account_id}`);
  parts.push(account.has_webhook_secret ? " · live webhooks on" : " · no webhook secret");
  if (account.last_error) parts.push(h("div", { class: "field-error" }, `Last error: ${account.last_error}`));
  return h("span", {}, parts);
}

async function rowData(t) {
  const [accounts, counts] = await Promise.all([
    api(`/api/tenants/${encodeURIComponent(t.id)}/accounts`).catch(() => []),
    api(`/api/events/${encodeURIComponent(t.id)}/counts`).catch(() => null),
  ]);
  return { ...t, klaviyo: accounts.find((a) => a.esp === "klaviyo") ?? null, events: counts?.total ?? null };
}

function actions(t) {
  const connect = h("button", { type: "button", class: "secondary", on: { click: () => openConnect(t.id) } },
    t.klaviyo ? "Reconnect" : "Connect Klaviyo");
  const buttons = [connect];
  if (t.klaviyo) {
    buttons.push(h("button", {
      type: "button", class: "secondary", on: { click: () => disconnect(t.id) },
    }, "Disconnect"));
  }
  buttons.push(h("a", { href: `/ui/backfill?tenant=${encodeURIComponent(t.id)}` }, "Backfill"));
  return h("div", { class: "row" }, buttons);
}

async function load() {
  try {
    const tenants = await api("/api/tenants");
    const rows = await Promise.all(tenants.map(rowData));
    clear(list).append(table([
      { label: "Tenant", value: (t) => h("span", {}, h("strong", {}, t.id), h("div", { class: "muted" }, t.name)) },
      { label: "Time zone", value: (t) => t.timezone },
      { label: "Klaviyo", value: (t) => health(t.klaviyo) },
      { label: "Events", value: (t) => fmtInt(t.events), num: true },
      { label: "Added", value: (t) => fmtDateTime(t.created_at) },
      { label: "Actions", value: actions },
    ], rows, { caption: "Tenants and their connections", empty: "No tenants yet: add one below." }));
  } catch (err) {
    showError(list, err);
  }
}

function openConnect(tenant) {
  connecting = tenant;
  document.getElementById("connect-tenant").textContent = tenant;
  document.getElementById("oauth-link").href = apiUrl("/api/connector/oauth/authorize", { tenant });
  clearFieldErrors(connectForm);
  clear(document.getElementById("connect-errors"));
  connectForm.reset();
  connectCard.hidden = false;
  document.getElementById("oauth-link").focus();
}

document.getElementById("connect-close").addEventListener("click", () => { connectCard.hidden = true; });

async function disconnect(tenant) {
  if (!window.confirm(`Disconnect ${tenant} from Klaviyo? Its stored access is forgotten; its data stays.`)) return;
  try {
    await api(`/api/tenants/${encodeURIComponent(tenant)}/accounts/klaviyo`, { method: "DELETE" });
    showNotice(messages, `${tenant} is disconnected from Klaviyo.`);
    await load();
  } catch (err) {
    showError(messages, err);
  }
}

addForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = document.getElementById("add-errors");
  clear(box);
  clearFieldErrors(addForm);
  const data = Object.fromEntries(new FormData(addForm));
  try {
    const t = await api("/api/tenants", { method: "POST", body: data });
    addForm.reset();
    showNotice(messages, `Tenant ${t.id} added. Connect it to Klaviyo next.`);
    await refreshTenants();
    await load();
    openConnect(t.id);
  } catch (err) {
    const left = bindFieldErrors(addForm, err);
    if (left.length || !err.errors?.length) showError(box, err);
  }
});

connectForm.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const box = document.getElementById("connect-errors");
  clear(box);
  clearFieldErrors(connectForm);
  const data = Object.fromEntries(new FormData(connectForm));
  if (!data.api_url) delete data.api_url;
  try {
    const account = await api(`/api/tenants/${encodeURIComponent(connecting)}/accounts/klaviyo`, { method: "PUT", body: data });
    connectCard.hidden = true;
    showNotice(messages, `${account.tenant} is connected to Klaviyo${account.account_id ? ` (account ${account.account_id})` : ""}.`);
    await load();
  } catch (err) {
    const left = bindFieldErrors(connectForm, err);
    if (left.length || !err.errors?.length) showError(box, err);
  }
});

const connected = new URL(window.location.href).searchParams.get("connected");
if (connected) showNotice(messages, `${connected} is connected to Klaviyo.`);
load();
