// Small DOM helpers shared by every page. Text always goes in as text (never as HTML).
import { api } from "./api.js";

export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

export function showError(container, err) {
  clear(container);
  const message = err?.message ?? String(err);
  const box = h("div", { class: "alert", role: "alert" }, message);
  container.append(box);
  return box;
}

export function showNotice(container, text) {
  clear(container);
  container.append(h("div", { class: "notice", role: "status" }, text));
}

export function clearFieldErrors(form) {
  form.querySelectorAll(".field-error").forEach((n) => n.remove());
  form.querySelectorAll("[aria-invalid]").forEach((n) => {
    n.removeAttribute("aria-invalid");
    n.removeAttribute("aria-describedby");
  });
}

// Puts each API field error next to the control whose name is the error's location (the
// whole dotted path, or its last part). Returns the errors no control matched.
export function bindFieldErrors(form, err) {
  clearFieldErrors(form);
  const left = [];
  for (const e of err?.errors ?? []) {
    const loc = (e.loc ?? []).filter((p) => p !== "body" && p !== "query" && p !== "path");
    const names = [loc.join("."), String(loc[loc.length - 1] ?? "")];
    let control = null;
    for (const name of names) {
      if (!name) continue;
      control = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (control) break;
    }
    if (!control) { left.push(e); continue; }
    const id = `${control.id || control.name}-error`;
    control.setAttribute("aria-invalid", "true");
    control.setAttribute("aria-describedby", id);
    const msg = h("p", { class: "field-error", id }, e.msg);
    (control.closest(".field") ?? control.parentElement).append(msg);
  }
  return left;
}

const nf = new Intl.NumberFormat();
export const fmtInt = (n) => (n === null || n === undefined ? "-" : nf.format(Math.round(n)));
export function fmtMoney(value, currency) {
  if (value === null || value === undefined) return "-";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "USD" }).format(value);
  } catch {
    return `${nf.format(value)} ${currency ?? ""}`.trim();
  }
}
export const fmtPct = (x) => (x === null || x === undefined ? "-" : `${(100 * x).toFixed(1)}%`);
export function fmtDateTime(iso) {
  if (!iso) return "-";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });
}

// The tenant every page works on: ?tenant= in the URL, else the last one chosen, else the first.
const TENANT_KEY = "sendflowr.tenant";
let tenant = null;
const listeners = [];

export function currentTenant() {
  return tenant;
}

export function onTenantChange(fn) {
  listeners.push(fn);
  if (tenant !== null) fn(tenant);
}

function setTenant(value, { push } = { push: true }) {
  tenant = value;
  try { localStorage.setItem(TENANT_KEY, value); } catch { /* private mode */ }
  const url = new URL(window.location.href);
  url.searchParams.set("tenant", value);
  if (push) history.replaceState(null, "", url);
  document.querySelectorAll("a[data-nav]").forEach((a) => {
    a.href = `/ui/${a.dataset.nav}?tenant=${encodeURIComponent(value)}`;
  });
  listeners.forEach((fn) => fn(value));
}

export async function refreshTenants(select = document.getElementById("tenant-select")) {
  if (!select) return [];
  const tenants = await api("/api/tenants");
  clear(select);
  for (const t of tenants) select.append(h("option", { value: t.id }, t.name && t.name !== t.id ? `${t.id} (${t.name})` : t.id));
  return tenants;
}

async function initTenants() {
  const select = document.getElementById("tenant-select");
  if (!select) return;
  let tenants = [];
  try {
    tenants = await refreshTenants(select);
  } catch (err) {
    const main = document.getElementById("main");
    if (main) main.prepend(h("div", { class: "alert", role: "alert" }, `Tenants could not be loaded: ${err.message}`));
    return;
  }
  select.addEventListener("change", () => setTenant(select.value));
  if (!tenants.length) {
    select.append(h("option", { value: "" }, "no tenants yet"));
    select.disabled = true;
    tenant = "";
    listeners.forEach((fn) => fn(""));
    return;
  }
  const ids = tenants.map((t) => t.id);
  const wanted = new URL(window.location.href).searchParams.get("tenant");
  let stored = null;
  try { stored = localStorage.getItem(TENANT_KEY); } catch { /* private mode */ }
  const chosen = [wanted, stored].find((t) => t && ids.includes(t)) ?? ids[0];
  select.value = chosen;
  setTenant(chosen);
}

export function poll(fn, ms) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } finally { if (!stopped) timer = setTimeout(tick, ms); }
  };
  tick();
  return () => { stopped = true; if (timer) clearTimeout(timer); };
}

// A table from column specs [{label, value: row => text|Node, num}] and rows.
export function table(columns, rows, { caption, empty } = {}) {
  if (!rows.length && empty) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)))),
      h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.value(r))))))));
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", initTenants);
else initTenants();
