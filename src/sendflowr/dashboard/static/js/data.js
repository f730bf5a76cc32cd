// Data viewer: a tenant's events by type and by day, revenue and average order value per
// currency, machine-open share, its confidence calibration map, top campaigns and flows, its
// orders page by page, and the orders and decisions as CSV downloads.
import { api, apiUrl } from "./api.js";
import {
  h, clear, showError, bindFieldErrors, clearFieldErrors, fmtInt, fmtMoney, fmtPct, fmtDateTime,
  table, onTenantChange,
} from "./ui.js";
import { barChart } from "./charts.js";

const PAGE_SIZE = 20;
const TOP_LIMIT = 10;
const $ = (id) => document.getElementById(id);
const messages = $("messages");
const empty = $("empty");
const sections = $("data-sections");
const filter = $("orders-filter");
const dayInput = $("orders-day");

const state = { tenant: null, offset: 0, day: "", loads: 0 };

const enc = (t) => encodeURIComponent(t);
const dataPath = (tenant, rest) => `/api/connector/backfill/data/${enc(tenant)}/${rest}`;

function stat(label, value, raw) {
  return h("div", { class: "stat", role: "group", "aria-label": label, "data-value": raw },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, value));
}

function renderSummary(s) {
  const cards = [
    stat("Events", fmtInt(totalEvents(s)), totalEvents(s)),
    stat("Orders", fmtInt(s.orders), s.orders),
  ];
  for (const r of s.revenue) {
    cards.push(stat(`Revenue (${r.currency})`, fmtMoney(r.revenue, currencyCode(r.currency)), r.revenue));
    cards.push(stat(`Average order value (${r.currency})`,
      fmtMoney(r.average_order_value, currencyCode(r.currency)), r.average_order_value));
  }
  cards.push(
    stat("Machine-open share", fmtPct(s.machine_open_share), s.machine_open_share),
    stat("Campaigns", fmtInt(s.campaigns), s.campaigns),
    stat("Flows", fmtInt(s.flows), s.flows),
  );
  clear($("summary")).append(...cards);
}

// "unknown" (orders that named no currency) is shown as a plain number
const currencyCode = (c) => (/^[A-Z]{3}$/.test(c) ? c : undefined);
const totalEvents = (s) => Object.values(s.events_by_type).reduce((a, b) => a + b, 0);

function renderDaily(s) {
  const days = [...new Set(s.events_by_day.map((d) => d.day))].sort();
  const types = Object.keys(s.events_by_type).sort();
  const at = new Map(days.map((d, i) => [d, i]));
  const series = types.map((t) => ({ label: t, values: new Array(days.length).fill(0) }));
  const index = new Map(types.map((t, i) => [t, i]));
  for (const d of s.events_by_day) series[index.get(d.event_type)].values[at.get(d.day)] += d.events;
  const chart = $("daily-chart");
  barChart(chart, {
    labels: days.map((d) => Date.parse(`${d}T00:00:00Z`) / 1000),
    xTime: true,
    series,
    stacked: true,
    title: "Events per UTC day, by type",
    yLabel: "events",
  });
  const total = totalEvents(s);
  const machine = s.events_by_day.reduce((a, d) => a + d.machine_opens, 0);
  clear($("by-type")).append(table([
    { label: "Event type", value: (t) => t },
    { label: "Events", value: (t) => fmtInt(s.events_by_type[t]), num: true },
    { label: "Share", value: (t) => fmtPct(total ? s.events_by_type[t] / total : 0), num: true },
    { label: "Machine opens", value: (t) => (t === "opened" ? fmtInt(machine) : ""), num: true },
  ], types, { caption: `${fmtInt(total)} events over ${days.length} days` }));
}

function renderCalibration(c) {
  $("calibration-summary").textContent = c.summary;
  clear($("calibration")).append(c.points.length ? table([
    { label: "Model's confidence", value: (p) => fmtPct(p.stated), num: true },
    { label: "Stated after calibration", value: (p) => fmtPct(p.calibrated), num: true },
  ], c.points, { caption: "The map, bin by bin (linear between the rows)" }) : "");
}

const revenueWords = (list) => (list.length
  ? list.map((r) => fmtMoney(r.revenue, currencyCode(r.currency))).join(" + ")
  : "-");

function renderTop(el, body, what) {
  clear(el).append(table([
    { label: what, value: (i) => (i.name ? h("span", { title: i.id }, i.name) : h("code", {}, i.id)) },
    { label: "Deliveries", value: (i) => fmtInt(i.deliveries), num: true },
    { label: "Opens", value: (i) => fmtInt(i.opens), num: true },
    { label: "Clicks", value: (i) => fmtInt(i.clicks), num: true },
    { label: "Orders", value: (i) => fmtInt(i.orders), num: true },
    { label: "Revenue", value: (i) => revenueWords(i.revenue), num: true },
  ], body.items, {
    caption: `Top ${what.toLowerCase()}s by revenue, then clicks (opens exclude machine opens)`,
    empty: `No events name a ${what.toLowerCase()} yet.`,
  }));
}

function source(o) {
  if (o.campaign_id) return `campaign ${o.campaign_id}`;
  if (o.flow_id) return `flow ${o.flow_id}`;
  return "-";
}

async function loadOrders(tenant, load) {
  const box = $("orders");
  const page = await api(dataPath(tenant, "orders"), {
    query: { limit: PAGE_SIZE, offset: state.offset, date: state.day },
  });
  if (load !== state.loads) return;
  clear(box).append(table([
    { label: "Time", value: (o) => fmtDateTime(o.occurred_at) },
    { label: "Order", value: (o) => o.order_id ?? o.esp_event_id },
    { label: "Value", value: (o) => fmtMoney(o.value, currencyCode(o.currency ?? "")), num: true },
    { label: "Items", value: (o) => fmtInt(o.items.length), num: true },
    { label: "Discount", value: (o) => o.discount_code ?? "" },
    { label: "Attributed to", value: source },
    { label: "Person", value: (o) => h("code", {}, o.universal_id) },
  ], page.orders, {
    caption: state.day ? `Orders of ${state.day} (UTC)` : "Orders, newest first",
    empty: state.day ? `No orders on ${state.day}.` : "No orders yet.",
  }));
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.orders.length;
  $("orders-info").textContent = `${fmtInt(first)} to ${fmtInt(last)} of ${fmtInt(page.total)}`;
  $("orders-prev").disabled = page.offset === 0;
  $("orders-next").disabled = page.next_offset === null;
}

function setLinks(tenant) {
  $("orders-csv").href = apiUrl(dataPath(tenant, "orders.csv"), { date: state.day });
  $("decisions-csv").href = apiUrl(`/api/tenants/${enc(tenant)}/decisions.csv`);
}

async function load(tenant) {
  const mine = ++state.loads;
  state.tenant = tenant;
  state.offset = 0;
  state.day = "";
  dayInput.value = "";
  clearFieldErrors(filter);
  clear(messages);
  if (!tenant) {
    sections.hidden = true;
    empty.hidden = false;
    empty.textContent = "No tenants yet: add one on the Tenants page.";
    return;
  }
  setLinks(tenant);
  try {
    const summary = await api(dataPath(tenant, "summary"));
    if (mine !== state.loads) return;
    if (!totalEvents(summary)) {
      sections.hidden = true;
      empty.hidden = false;
      empty.textContent = "No events yet: connect Klaviyo and run a backfill.";
      return;
    }
    empty.hidden = true;
    sections.hidden = false; // before drawing: the chart takes the width it is given
    renderSummary(summary);
    renderDaily(summary);
    const [campaigns, flows, calibration] = await Promise.all([
      api(dataPath(tenant, "top"), { query: { kind: "campaign", limit: TOP_LIMIT } }),
      api(dataPath(tenant, "top"), { query: { kind: "flow", limit: TOP_LIMIT } }),
      api("/timing/calibration", { query: { tenant } }),
    ]);
    if (mine !== state.loads) return;
    renderCalibration(calibration);
    renderTop($("campaigns"), campaigns, "Campaign");
    renderTop($("flows"), flows, "Flow");
    await loadOrders(tenant, mine);
  } catch (err) {
    if (mine === state.loads) showError(messages, err);
  }
}

async function reloadOrders() {
  const mine = ++state.loads;
  clear(messages);
  clearFieldErrors(filter);
  setLinks(state.tenant);
  try {
    await loadOrders(state.tenant, mine);
  } catch (err) {
    if (mine !== state.loads) return;
    const left = bindFieldErrors(filter, err); // a bad day is shown at the day field
    if (left.length || !err.errors?.length) showError(messages, err);
  }
}

filter.addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.day = dayInput.value;
  state.offset = 0;
  reloadOrders();
});
$("orders-all").addEventListener("click", () => {
  dayInput.value = "";
  state.day = "";
  state.offset = 0;
  reloadOrders();
});
$("orders-prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - PAGE_SIZE);
  reloadOrders();
});
$("orders-next").addEventListener("click", () => {
  state.offset += PAGE_SIZE;
  reloadOrders();
});

onTenantChange((t) => load(t));
