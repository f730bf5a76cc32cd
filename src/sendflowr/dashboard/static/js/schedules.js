// Campaign schedules: the tenant's campaigns with their triggers by status, a campaign's
// dispatch timeline against the ESP capacity the planner booked, its late and failed triggers
// with the reasons in words, cancelling it, and scheduling a new one from an intent.
import { api, ApiError } from "./api.js";
import {
  h, clear, showError, showNotice, bindFieldErrors, clearFieldErrors, fmtInt, fmtPct,
  fmtDateTime, table, currentTenant, onTenantChange, poll,
} from "./ui.js";
import { barChart } from "./charts.js";

const STATUSES = ["scheduled", "sending", "sent", "failed", "cancelled"];
const WORDS = {
  scheduled: "scheduled", sending: "sending", sent: "sent", failed: "failed", cancelled: "cancelled",
};
const COLORS = {
  scheduled: "#1f5fbf", sending: "#e8590c", sent: "#2b8a3e", failed: "#c92a2a", cancelled: "#868e96",
  other: "#c5ccd6",
};
const BUCKET_WORDS = { 60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour" };
const FAST_MS = 2000;
const SLOW_EVERY = 10; // ticks between refreshes while nothing runs

const $ = (id) => document.getElementById(id);
const messages = $("messages");
const listBox = $("list");
const detailCard = $("detail-card");
const form = $("new");
const timelineForm = $("timeline-form");

let selected = new URL(window.location.href).searchParams.get("schedule");
let schedules = [];
let lastTimeline = null;
let running = false;
let loading = false;

const isRunning = (counts) => Boolean((counts?.scheduled ?? 0) + (counts?.sending ?? 0));

function remember(id) {
  selected = id;
  const url = new URL(window.location.href);
  if (id) url.searchParams.set("schedule", id);
  else url.searchParams.delete("schedule");
  history.replaceState(null, "", url);
}

// "Nov 23, 2026, 01:53 – 01:55" on one day, both in full otherwise.
function fmtWindow([from, to]) {
  const a = new Date(from);
  const b = new Date(to);
  if (a.toDateString() !== b.toDateString()) return `${fmtDateTime(from)} – ${fmtDateTime(to)}`;
  return `${fmtDateTime(from)} – ${b.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" })}`;
}

function badges(counts) {
  const shown = STATUSES.filter((s) => counts?.[s]);
  if (!shown.length) return h("span", { class: "muted" }, "no triggers");
  return h("span", { class: "row badges" },
    shown.map((s) => h("span", { class: `badge ${s}` }, `${fmtInt(counts[s])} ${WORDS[s]}`)));
}

function campaignState(s) {
  if (isRunning(s.triggers)) return h("span", { class: "badge sending" }, "running");
  return h("span", { class: `badge ${s.status}` }, s.status === "scheduled" ? "done" : s.status);
}

function renderList() {
  if (!schedules.length) {
    clear(listBox).append(h("p", { class: "empty" },
      "No campaigns yet: schedule one below (an intent is needed first: see the Intents page)."));
    return;
  }
  clear(listBox).append(table([
    { label: "Created", value: (s) => fmtDateTime(s.created_at) },
    { label: "Intent", value: (s) => s.intent_id },
    { label: "State", value: campaignState },
    { label: "Window", value: (s) => fmtWindow(s.window) },
    { label: "Audience", value: (s) => fmtInt(s.audience), num: true },
    { label: "Triggers", value: (s) => badges(s.triggers) },
    {
      label: "Timeline",
      value: (s) => h("button", {
        type: "button", class: "secondary", "aria-pressed": String(s.schedule_id === selected),
        "aria-label": `Show campaign ${s.schedule_id}`, on: { click: () => select(s.schedule_id) },
      }, s.schedule_id === selected ? "Shown" : "Show"),
    },
  ], schedules, { caption: `The latest ${schedules.length} campaign(s), newest first` }));
}

function stat(label, value, cls) {
  return h("div", { class: `stat ${cls ?? ""}` },
    h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

function duration(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  const hrs = Math.floor(s / 3600);
  const min = Math.floor((s % 3600) / 60);
  return min ? `${hrs} h ${min} min` : `${hrs} h`;
}

function person(t) {
  return h("code", { title: t.universal_id }, t.universal_id.slice(0, 12) + "…");
}

function renderChart(tl) {
  const el = $("timeline");
  const labels = tl.buckets.map((b) => Date.parse(b.start) / 1000);
  const series = STATUSES
    .filter((s) => tl.buckets.some((b) => b.counts[s]))
    .map((s) => ({ label: WORDS[s], values: tl.buckets.map((b) => b.counts[s] ?? 0), color: COLORS[s] }));
  if (tl.buckets.some((b) => b.other_campaigns)) {
    series.push({ label: "other campaigns", values: tl.buckets.map((b) => b.other_campaigns), color: COLORS.other });
  }
  const cap = tl.capacity_per_bucket;
  const peak = Math.max(0, ...tl.buckets.map((b) => b.total + b.other_campaigns));
  const per = BUCKET_WORDS[tl.bucket_seconds] ?? `${tl.bucket_seconds} s`;
  const ceiling = tl.ceiling_per_minute ? ` (the ESP's ceiling: ${fmtInt(tl.ceiling_per_minute)} a minute)` : "";
  $("capacity-note").textContent =
    `ESP capacity booked by the planner: ${fmtInt(tl.capacity_per_minute)} triggers a minute${ceiling}, ` +
    `${fmtInt(cap)} per ${per}. The busiest ${per} holds ${fmtInt(peak)} (${fmtPct(cap ? peak / cap : 0)} of it).`;
  if (!series.length || !labels.length) {
    clear(el).append(h("p", { class: "empty" }, "No triggers to draw."));
    return;
  }
  const plot = barChart(el, {
    labels, series, stacked: true, xTime: true, yLabel: "triggers",
    title: `Triggers per ${per} by status`,
  });
  // The capacity line, when it is on the scale of the bars (else the note above says it).
  if (cap > 0 && cap <= 4 * Math.max(1, peak)) {
    plot.setScale("y", { min: 0, max: Math.ceil(cap * 1.15) });
    const drawCapacity = (u) => {
      const y = u.valToPos(cap, "y", true);
      if (!Number.isFinite(y)) return;
      const ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = "#b00020";
      ctx.setLineDash([8, 5]);
      ctx.lineWidth = 2 * devicePixelRatio;
      ctx.beginPath();
      ctx.moveTo(u.bbox.left, y);
      ctx.lineTo(u.bbox.left + u.bbox.width, y);
      ctx.stroke();
      ctx.fillStyle = "#b00020";
      ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
      ctx.fillText(`capacity ${fmtInt(cap)}`, u.bbox.left + 4 * devicePixelRatio, y - 4 * devicePixelRatio);
      ctx.restore();
    };
    plot.hooks.draw = [...(plot.hooks.draw ?? []), drawCapacity];
    plot.redraw(false, false);
    el.setAttribute("aria-label", `${el.getAttribute("aria-label")}; ESP capacity ${cap} per ${per}`);
  }
}

function renderTimeline(tl) {
  lastTimeline = tl;
  detailCard.hidden = false;
  $("detail-id").textContent = tl.schedule_id;
  const s = schedules.find((x) => x.schedule_id === tl.schedule_id);
  const summary = s?.summary ?? {};
  $("detail-summary").textContent =
    `Intent ${tl.intent_id} via ${tl.esp}; window ${fmtWindow(tl.window)}` +
    (s ? `; ${fmtInt(s.audience)} recipients` : "") +
    (summary.moved ? `; ${fmtInt(summary.moved)} moved off their best minute to respect capacity` : "") +
    `. Updated ${fmtDateTime(tl.now)}.`;
  clear($("detail-counts")).append(
    ...STATUSES.map((st) => stat(WORDS[st], fmtInt(tl.counts[st] ?? 0), st)),
    stat(`late (> ${duration(tl.late_after_seconds)})`, fmtInt(tl.late_count), tl.late_count ? "failed" : ""),
  );
  renderChart(tl);
  clear($("late")).append(table([
    { label: "Trigger time", value: (t) => fmtDateTime(t.trigger_at) },
    { label: "Person", value: person },
    { label: "Status", value: (t) => h("span", { class: `badge ${t.status}` }, WORDS[t.status] ?? t.status) },
    { label: "Late by", value: (t) => (t.late_seconds === null ? "-" : duration(t.late_seconds)), num: true },
    { label: "Why", value: (t) => t.reason },
  ], tl.late, {
    caption: tl.late_count > tl.late.length ? `The first ${tl.late.length} of ${fmtInt(tl.late_count)}` : null,
    empty: "No trigger is late.",
  }));
  clear($("reasons"));
  if (tl.failure_reasons.length) {
    $("reasons").append(table([
      { label: "Reason", value: (r) => r.error },
      { label: "Triggers", value: (r) => fmtInt(r.count), num: true },
    ], tl.failure_reasons, { caption: "Why triggers failed" }));
  }
  clear($("failed")).append(table([
    { label: "Trigger time", value: (t) => fmtDateTime(t.trigger_at) },
    { label: "Person", value: person },
    { label: "Attempts", value: (t) => fmtInt(t.attempts), num: true },
    { label: "Why", value: (t) => t.reason },
  ], tl.failed, {
    caption: tl.failed_count > tl.failed.length ? `The first ${tl.failed.length} of ${fmtInt(tl.failed_count)}` : null,
    empty: "No trigger failed.",
  }));
  const cancel = $("cancel");
  cancel.hidden = !tl.running;
  $("live").textContent = tl.running ? `Updating every ${FAST_MS / 1000} s while triggers are due.` : "";
}

async function loadTimeline() {
  const tenant = currentTenant();
  if (!selected || !tenant) { detailCard.hidden = true; return; }
  clearFieldErrors(timelineForm);
  clear($("timeline-errors"));
  try {
    const tl = await api(`/api/schedules/${encodeURIComponent(selected)}/timeline`, {
      query: { tenant, bucket: $("bucket").value, late_after_seconds: $("late-after").value },
    });
    if (tl.schedule_id === selected) renderTimeline(tl);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) { remember(null); detailCard.hidden = true; return; }
    const left = bindFieldErrors(timelineForm, err);
    if (left.length || !err.errors?.length) showError($("timeline-errors"), err);
    detailCard.hidden = false;
  }
}

async function loadList() {
  const tenant = currentTenant();
  $("tenant-name").textContent = tenant || "";
  if (!tenant) { clear(listBox).append(h("p", { class: "empty" }, "Add a tenant first.")); return; }
  try {
    schedules = await api("/api/schedules", { query: { tenant, limit: 50 } });
    renderList();
  } catch (err) {
    showError(listBox, err);
  }
}

async function refresh() {
  if (loading) return;
  loading = true;
  try {
    await loadList();
    await loadTimeline();
    running = schedules.some((s) => isRunning(s.triggers)) || Boolean(lastTimeline?.running && lastTimeline.schedule_id === selected);
  } finally {
    loading = false;
  }
}

function select(id) {
  remember(id);
  lastTimeline = null;
  closeConfirm();
  renderList();
  refresh().then(() => $("detail-h").scrollIntoView({ block: "start" }));
}

async function loadIntents(tenant) {
  const sel = $("intent");
  clear(sel);
  if (!tenant) return;
  try {
    const intents = await api(`/api/tenants/${encodeURIComponent(tenant)}/intents`);
    if (!intents.length) sel.append(h("option", { value: "" }, "no intents yet: create one on the Intents page"));
    for (const i of intents) {
      sel.append(h("option", { value: i.intent_id }, `${i.name} (${i.intent_id}, ${i.binding.esp})`));
    }
  } catch (err) {
    showError($("new-errors"), err);
  }
}

// -- cancel, with an inline confirmation ---------------------------------------------------------
let confirmBox = null;
function closeConfirm() {
  confirmBox?.remove();
  confirmBox = null;
  $("cancel").disabled = false;
}

$("cancel").addEventListener("click", () => {
  if (confirmBox || !selected) return;
  const id = selected;
  const open = (lastTimeline?.counts.scheduled ?? 0);
  $("cancel").disabled = true;
  const yes = h("button", { type: "button", class: "danger", on: { click: () => doCancel(id) } }, "Yes, cancel it");
  confirmBox = h("div", { class: "alert confirm", role: "alertdialog", "aria-labelledby": "confirm-text" },
    h("p", { id: "confirm-text" },
      `Cancel campaign ${id}? Its ${fmtInt(open)} trigger(s) not yet sent will not be sent; ` +
      "a trigger being sent right now still finishes."),
    h("div", { class: "row" }, yes,
      h("button", { type: "button", class: "secondary", on: { click: closeConfirm } }, "Keep it")));
  $("detail-summary").after(confirmBox);
  yes.focus();
});

async function doCancel(id) {
  clear(messages);
  try {
    const out = await api(`/api/schedules/${encodeURIComponent(id)}/cancel`, {
      method: "POST", body: { tenant: currentTenant() },
    });
    showNotice(messages, `Campaign ${id} cancelled: ${fmtInt(out.cancelled)} trigger(s) will not be sent.`);
  } catch (err) {
    showError(messages, err);
  }
  closeConfirm();
  await refresh();
}

// -- schedule a campaign ---------------------------------------------------------------------
const AUDIENCE_LABELS = {
  recipients: ["Email addresses (one a line)", "Up to a few thousand here; larger audiences: a Klaviyo list or segment."],
  klaviyo_list_id: ["Klaviyo list id", "The list's id in Klaviyo (Lists & segments); its profiles are read through the API."],
  klaviyo_segment_id: ["Klaviyo segment id", "The segment's id in Klaviyo; its profiles are read through the API."],
};
$("source").addEventListener("change", () => {
  const [label, hint] = AUDIENCE_LABELS[$("source").value];
  $("audience-label").textContent = label;
  $("audience-hint").textContent = hint;
  $("audience").rows = $("source").value === "recipients" ? 4 : 1;
});

function audience() {
  const source = $("source").value;
  const text = $("audience").value;
  if (source !== "recipients") return { [source]: text.trim() };
  const values = text.split(/[\n,;]+/).map((v) => v.trim()).filter(Boolean);
  return { recipients: values.map((value) => ({ type: "email", value })) };
}

// Errors inside the audience (e.g. one bad address) belong to the audience box, in words.
function placeable(err, lines) {
  const errors = (err.errors ?? []).map((e) => {
    const loc = e.loc ?? [];
    if (loc[0] === "body" && loc[1] === "audience" && loc.length > 2) {
      const i = loc[2] === "recipients" && Number.isInteger(loc[3]) ? loc[3] : null;
      const where = i === null ? "" : `line ${i + 1} (${lines[i] ?? ""}): `;
      return { ...e, loc: ["body", "audience"], msg: where + e.msg };
    }
    return e;
  });
  return new ApiError(err.status, err.message, errors);
}

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const tenant = currentTenant();
  const box = $("new-errors");
  clear(box);
  clearFieldErrors(form);
  const intent = $("intent").value;
  if (!intent) {
    bindFieldErrors(form, { errors: [{ loc: ["intent_id"], msg: "choose an intent (create one on the Intents page first)" }] });
    return;
  }
  const body = { tenant, audience: audience() };
  const startText = $("send-after").value;
  const start = startText ? new Date(startText) : new Date();
  if (startText) {
    if (Number.isNaN(start.getTime())) {
      bindFieldErrors(form, { errors: [{ loc: ["send_after"], msg: "not a date and time" }] });
      return;
    }
    body.send_after = start.toISOString();
  }
  const length = $("send-before").value;
  if (length) body.send_before = new Date(start.getTime() + Number(length) * 1000).toISOString();
  const button = form.querySelector('button[type="submit"]');
  button.disabled = true;
  try {
    const out = await api(`/api/intents/${encodeURIComponent(intent)}/schedule`, { method: "POST", body });
    const n = Object.values(out.triggers).reduce((a, b) => a + b, 0);
    showNotice(box, `Campaign ${out.schedule_id} scheduled: ${fmtInt(n)} trigger(s) for ` +
      `${fmtInt(out.audience)} recipient(s) between ${fmtDateTime(out.window[0])} and ${fmtDateTime(out.window[1])}.`);
    $("audience").value = "";
    select(out.schedule_id);
  } catch (err) {
    const lines = body.audience.recipients?.map((r) => r.value) ?? [];
    const left = bindFieldErrors(form, placeable(err, lines));
    if (left.length) showError(box, { message: left.map((e) => e.msg).join("; ") });
    else if (!err.errors?.length) showError(box, err);
  } finally {
    button.disabled = false;
  }
});

timelineForm.addEventListener("submit", (ev) => ev.preventDefault());
$("bucket").addEventListener("change", loadTimeline);
$("late-after").addEventListener("change", loadTimeline);
$("reload").addEventListener("click", refresh);

// Poll fast while a campaign has triggers due, slowly otherwise.
let ticks = 0;
let started = false;
onTenantChange((t) => {
  if (started) { remember(null); lastTimeline = null; detailCard.hidden = true; closeConfirm(); }
  started = true;
  loadIntents(t);
  refresh();
});
poll(async () => {
  ticks += 1;
  if (ticks > 1 && (running || ticks % SLOW_EVERY === 0)) await refresh();
}, FAST_MS);
