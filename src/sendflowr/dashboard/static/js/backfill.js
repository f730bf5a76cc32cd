// Backfill manager: every tenant's latest job with a live progress bar; start (a one-day test
// run or a longer history), start all, retry, cancel, clear; per-metric progress and errors.
import { api } from "./api.js";
import {
  h, clear, showError, showNotice, fmtInt, fmtDateTime, table, currentTenant, onTenantChange, poll,
} from "./ui.js";

const jobsBox = document.getElementById("jobs");
const detail = document.getElementById("detail");
const messages = document.getElementById("messages");
const ACTIVE = new Set(["queued", "in_progress"]);
let active = false;

const STATUS_WORDS = {
  queued: "queued", in_progress: "running", completed: "completed", failed: "failed",
  cancelled: "cancelled",
};

function bar(job, label) {
  const pct = job ? job.progress_percent : 0;
  return h("div", { class: "progress-line" },
    h("progress", { max: "100", value: String(pct), "aria-label": label }),
    h("span", { class: "pct" }, `${pct.toFixed(pct % 1 ? 1 : 0)}%`));
}

function jobWords(job) {
  if (!job) return "no backfill yet";
  const parts = [`${STATUS_WORDS[job.status] ?? job.status}`,
    `${fmtInt(job.events)} events`, `${job.done_units}/${job.total_units} days`];
  if (job.failed_units) parts.push(`${job.failed_units} failed`);
  if (job.cancel_requested && ACTIVE.has(job.status)) parts.push("cancelling");
  return parts.join(" · ");
}

function renderJobs(rows) {
  clear(jobsBox).append(table([
    { label: "Tenant", value: (r) => h("a", { href: `/ui/backfill?tenant=${encodeURIComponent(r.tenant)}` }, r.tenant) },
    { label: "Status", value: (r) => r.job ? h("span", { class: `badge ${r.job.status}` }, STATUS_WORDS[r.job.status]) : h("span", { class: "badge" }, r.connected ? "connected" : "not connected") },
    { label: "Progress", value: (r) => bar(r.job, `Backfill progress of ${r.tenant}`) },
    { label: "Detail", value: (r) => h("span", {}, jobWords(r.job), r.job?.error ? h("div", { class: "field-error" }, r.job.error) : null) },
  ], rows, { caption: "Latest backfill per tenant", empty: "No tenant is connected to Klaviyo yet: connect one on the Tenants page." }));
}

function renderDetail(tenant, job) {
  clear(detail);
  if (!tenant) { detail.append(h("p", { class: "empty" }, "Add a tenant first.")); return; }
  if (!job) { detail.append(h("p", { class: "empty" }, `${tenant} has no backfill yet. Start a test run to check the connection.`)); return; }
  detail.append(...[
    h("p", {}, h("span", { class: `badge ${job.status}` }, STATUS_WORDS[job.status]), " ",
      `${job.kind} of ${fmtDateTime(job.range_start)} to ${fmtDateTime(job.range_end)}`),
    bar(job, `Backfill progress of ${tenant}`),
    h("p", { class: "muted" }, jobWords(job),
      job.started_at ? ` · started ${fmtDateTime(job.started_at)}` : "",
      job.finished_at ? ` · finished ${fmtDateTime(job.finished_at)}` : ""),
    job.error ? h("div", { class: "alert", role: "alert" }, `The backfill stopped: ${job.error}`) : null,
  ].filter(Boolean));
  if (job.metrics?.length) {
    detail.append(table([
      { label: "Metric", value: (m) => m.metric },
      { label: "Days", value: (m) => `${m.done_days}/${m.total_days}`, num: true },
      { label: "Failed days", value: (m) => fmtInt(m.failed_days), num: true },
      { label: "Events", value: (m) => fmtInt(m.events), num: true },
      { label: "Errors", value: (m) => m.errors.length ? h("ul", {}, m.errors.slice(0, 5).map((e) => h("li", {}, e))) : "none" },
    ], job.metrics, { caption: "Per metric" }));
  }
  document.getElementById("retry").disabled = !["failed", "cancelled"].includes(job.status);
  document.getElementById("cancel").disabled = !ACTIVE.has(job.status);
  document.getElementById("clear").disabled = ACTIVE.has(job.status);
}

async function refresh() {
  const tenant = currentTenant();
  try {
    const rows = await api("/api/connector/backfill/status");
    renderJobs(rows);
    const mine = rows.find((r) => r.tenant === tenant);
    let job = null;
    if (tenant && mine?.job) job = await api(`/api/connector/backfill/status/${encodeURIComponent(tenant)}`);
    renderDetail(tenant, job);
    active = rows.some((r) => r.job && ACTIVE.has(r.job.status));
  } catch (err) {
    showError(jobsBox, err);
  }
}

async function act(fn, done) {
  clear(messages);
  try {
    const result = await fn();
    showNotice(messages, done(result));
  } catch (err) {
    showError(messages, err);
  }
  await refresh();
}

const path = (suffix = "") => `/api/connector/backfill/${encodeURIComponent(currentTenant())}${suffix}`;

document.getElementById("start-one").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const days = document.getElementById("one-days").value;
  act(() => api(path(), { method: "POST", query: { days } }),
    (job) => `Backfill ${job.job_id} of ${job.tenant} queued (${days} day${days === "1" ? "" : "s"}).`);
});
document.getElementById("start-all").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const days = document.getElementById("all-days").value;
  act(() => api("/api/connector/backfill/start-all", { method: "POST", query: { days } }), (r) => {
    const skipped = Object.entries(r.skipped).map(([t, why]) => `${t}: ${why}`);
    return `${r.started.length} backfill(s) queued.` + (skipped.length ? ` Skipped ${skipped.join("; ")}.` : "");
  });
});
document.getElementById("retry").addEventListener("click", () =>
  act(() => api(path("/retry"), { method: "POST" }), (job) => `Backfill ${job.job_id} queued again; finished days are kept.`));
document.getElementById("cancel").addEventListener("click", () =>
  act(() => api(path("/cancel"), { method: "POST" }), () => "Cancelling: the backfill stops after its current page."));
document.getElementById("clear").addEventListener("click", () => {
  if (!window.confirm("Forget this tenant's finished backfills? Stored events are kept.")) return;
  act(() => api(path(), { method: "DELETE" }), (r) => `${r.jobs_deleted} finished job(s) forgotten.`);
});

// Poll fast while a job runs, slowly otherwise.
let ticks = 0;
poll(async () => {
  ticks += 1;
  if (active || ticks % 5 === 0) await refresh();
}, 1000);
onTenantChange((t) => {
  document.getElementById("tenant-name").textContent = t || "";
  refresh();
});
