// Decision explorer: look a person up (email, ESP id or universal id), see their identifiers
// and merges, their engagement as a 7 x 24 local-time heat map, and a decision over a chosen
// window with the scored curve it was chosen from (target, trigger and alternatives marked)
// and its explanation in words.
import { api, ApiError } from "./api.js";
import {
  h, clear, showError, showNotice, bindFieldErrors, clearFieldErrors, fmtInt, fmtPct,
  table, currentTenant, onTenantChange,
} from "./ui.js";
import { heatmap, lineChart } from "./charts.js";

const lookupForm = document.getElementById("lookup");
const lookupResult = document.getElementById("lookup-result");
const personBox = document.getElementById("person");
const zoneForm = document.getElementById("zone-form");
const decideForm = document.getElementById("decide-form");
const decisionBox = document.getElementById("decision");
const heatBox = document.getElementById("heatmap");
const heatErrors = document.getElementById("heatmap-errors");
const totalsBox = document.getElementById("engagement-totals");
const BROWSER_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

const TYPE_WORDS = { email: "email", klaviyo_id: "ESP id", universal_id: "universal id" };
let person = null; // the profile shown: {universal_id, ...}
let zoneShown = null; // the zone the heat map is in (the API's answer)
let lastDecision = null; // [decision, explanation, explanation error]: re-shown on a zone change

// -- formatting -------------------------------------------------------------------------
function inZone(iso, zone) {
  if (!iso) return "-";
  const d = new Date(iso);
  try {
    return d.toLocaleString(undefined, {
      timeZone: zone, weekday: "short", month: "short", day: "numeric", hour: "2-digit",
      minute: "2-digit",
    });
  } catch {
    return d.toISOString();
  }
}

function utcHm(iso) {
  return iso ? `${iso.slice(0, 16).replace("T", " ")} UTC` : "-";
}

function localInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

// -- lookup -----------------------------------------------------------------------------
function resetPerson() {
  person = null;
  lastDecision = null;
  personBox.hidden = true;
  clear(lookupResult);
  clear(decisionBox);
}

async function lookUp(type, value) {
  const tenant = currentTenant();
  clearFieldErrors(lookupForm);
  resetPerson();
  if (!tenant) {
    showError(lookupResult, new Error("Choose a tenant first."));
    return;
  }
  if (!value) {
    bindFieldErrors(lookupForm, { errors: [{ loc: ["value"], msg: "Enter an identifier to look up." }] });
    return;
  }
  let profile;
  try {
    profile = await api("/api/identity/resolve", { query: { tenant, type, value } });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      showError(lookupResult, new Error(
        `No person with ${TYPE_WORDS[type] ?? type} “${value}” in tenant ${tenant}. ` +
        "Check the value, or the tenant chosen at the top."));
      return;
    }
    const left = bindFieldErrors(lookupForm, err);
    if (left.length || !(err instanceof ApiError) || !err.errors?.length) showError(lookupResult, err);
    return;
  }
  person = profile;
  const url = new URL(window.location.href);
  url.searchParams.set("uid", profile.universal_id);
  history.replaceState(null, "", url);
  showPerson(profile);
  await loadEngagement();
}

function showPerson(p) {
  personBox.hidden = false;
  document.getElementById("person-uid").textContent = p.universal_id;
  const ids = document.getElementById("identifiers");
  clear(ids).append(table(
    [
      { label: "Type", value: (i) => i.type },
      { label: "Value", value: (i) => h("code", {}, i.value) },
    ],
    [{ type: "universal_id", value: p.universal_id }, ...p.identifiers],
    { empty: "No identifiers." },
  ));
  if (p.identifiers.some((i) => i.type === "email")) {
    ids.append(h("p", { class: "hint" }, "Email addresses are stored only as keyed hashes."));
  }
  if (p.aliases?.length) {
    ids.append(h("p", { class: "hint" }, `Merged into this person: ${p.aliases.join(", ")}`));
  }
  const merges = document.getElementById("merges");
  clear(merges);
  if (!p.recent_merges?.length) {
    merges.append(h("p", { class: "empty" }, "No merges: every identifier arrived on this person."));
    return;
  }
  merges.append(h("ul", {}, p.recent_merges.map((m) => h("li", {},
    h("span", { class: `badge ${m.status === "merged" ? "ok" : m.status === "refused" ? "warn" : ""}` }, m.status),
    " ",
    `${m.merged} into ${m.survivor} `,
    h("span", { class: "muted" }, `(${m.reason}; ${inZone(m.created_at, BROWSER_ZONE)}` +
      `${m.occurrences > 1 ? `; ${m.occurrences} times` : ""})`),
    m.identifiers?.length
      ? h("div", { class: "hint" }, `by ${m.identifiers.map((i) => `${i.type} ${i.value}`).join(", ")}`)
      : null))));
}

// -- engagement heat map ----------------------------------------------------------------
async function loadEngagement() {
  if (!person) return;
  const tenant = currentTenant();
  const data = new FormData(zoneForm);
  const tz = String(data.get("tz") ?? "").trim();
  clearFieldErrors(zoneForm);
  clear(heatErrors);
  let body;
  try {
    body = await api(`/timing/engagement/${encodeURIComponent(person.universal_id)}`, {
      query: { tenant, tz, days: data.get("days") },
    });
  } catch (err) {
    const left = bindFieldErrors(zoneForm, err);
    if (left.length || !err.errors?.length) showError(heatErrors, err);
    return;
  }
  zoneShown = body.zone;
  if (!tz) document.getElementById("zone").placeholder = body.zone;
  const t = body.totals;
  clear(totalsBox).append(
    stat("Engagements in the grid", fmtInt(t.engagements)),
    stat("Clicks", fmtInt(t.clicked)),
    stat("Human opens", fmtInt(t.opened)),
    stat("Machine opens and clicks (not in the grid)", fmtInt(t.machine)),
    stat("Messages delivered", fmtInt(t.deliveries)),
  );
  const since = body.history.since.slice(0, 10);
  const until = body.history.until.slice(0, 10);
  heatmap(heatBox, {
    rowLabels: body.days,
    colLabels: body.hours.map((x) => String(x).padStart(2, "0")),
    values: body.grid,
    caption: `Human clicks and opens by local day and hour, in ${body.zone} ` +
      `(${since} to ${until})`,
  });
  heatBox.append(h("p", { class: "hint" },
    "The decision also weighs orders, site visits and product views; machine opens and clicks never count."));
  if (!t.engagements) {
    heatBox.append(h("p", { class: "empty" },
      `No human clicks or opens in the last ${data.get("days")} days: the decision relies on the audience and the prior.`));
  }
  if (body.history.truncated) {
    heatBox.append(h("p", { class: "hint" }, "More events than one read takes: the grid shows the earliest."));
  }
}

// -- decision and curve -----------------------------------------------------------------
function windowDefaults() {
  const now = new Date();
  now.setSeconds(0, 0);
  now.setMinutes(now.getMinutes() + 1);
  decideForm.elements.send_after.value = localInput(now);
  decideForm.elements.send_before.value = localInput(new Date(now.getTime() + 24 * 3600 * 1000));
}

function instant(value) {
  if (!value) return undefined;
  const d = new Date(value); // datetime-local: the browser's zone
  return Number.isNaN(d.getTime()) ? value : d.toISOString();
}

async function decide() {
  if (!person) return;
  const tenant = currentTenant();
  clearFieldErrors(decideForm);
  showNotice(decisionBox, "Deciding…");
  const form = new FormData(decideForm);
  let d;
  try {
    d = await api("/timing/decide", {
      method: "POST",
      body: {
        tenant,
        identifier: { type: "universal_id", value: person.universal_id },
        send_after: instant(String(form.get("send_after") ?? "")),
        send_before: instant(String(form.get("send_before") ?? "")),
        include_curve: true,
      },
    });
  } catch (err) {
    clear(decisionBox);
    const left = bindFieldErrors(decideForm, err);
    if (left.length || !err.errors?.length) showError(decisionBox, err);
    return;
  }
  let explanation = null;
  let explanationError = null;
  try {
    explanation = await api(`/timing/explanations/${encodeURIComponent(d.explanation_ref)}`, { query: { tenant } });
  } catch (err) {
    explanationError = err;
  }
  lastDecision = [d, explanation, explanationError];
  showDecision(d, explanation, explanationError);
}

function showDecision(d, explanation, explanationError) {
  const zone = zoneShown ?? "UTC";
  clear(decisionBox);
  const stats = h("div", { class: "stats" });
  if (d.suppressed) {
    stats.append(stat("Suppressed", `${d.suppression?.policy ?? ""}`));
  } else {
    stats.append(
      stat("Target minute", inZone(d.target_minute_utc, zone)),
      stat("Trigger at", inZone(d.trigger_timestamp_utc, zone)),
      stat("Confidence", fmtPct(d.confidence_score)),
    );
  }
  stats.append(stat("Fallback level", d.fallback_level));
  decisionBox.append(stats);
  decisionBox.append(h("p", { class: "hint" },
    `Times in ${zone} (target ${utcHm(d.target_minute_utc)}, trigger ${utcHm(d.trigger_timestamp_utc)}, ` +
    `${d.latency_estimate_seconds} s before delivery). Weights: ` +
    Object.entries(d.context_weights).map(([k, v]) => `${k} ${fmtPct(v)}`).join(", ") +
    `. Decision ${d.decision_id}, model ${d.model_version}.`));
  if (d.suppressed && d.suppression) {
    decisionBox.append(h("div", { class: "alert", role: "alert" }, `No send: ${d.suppression.reason}`));
  }
  if (d.curve?.points?.length) decisionBox.append(curveChart(d, zone));
  if (d.alternatives?.length) {
    decisionBox.append(table(
      [
        { label: "Alternative", value: (a) => inZone(a.target_minute_utc, zone) },
        { label: "UTC", value: (a) => utcHm(a.target_minute_utc) },
        { label: "Score", value: (a) => fmtPct(a.score), num: true },
      ],
      d.alternatives,
      { caption: "Alternatives (best first)" },
    ));
  }
  const words = h("section", { "aria-labelledby": "why-h" }, h("h3", { id: "why-h" }, "Why this minute"));
  if (explanation) {
    words.append(h("p", { id: "explanation" }, explanation.summary));
    if (explanation.policies?.length) {
      words.append(h("p", { class: "hint" }, `Policies: ${explanation.policies.join(", ")}`));
    }
  } else {
    showError(words.appendChild(h("div")), explanationError ?? new Error("No explanation."));
  }
  decisionBox.append(words);
}

function curveChart(d, zone) {
  const points = d.curve.points;
  const x = points.map((p) => Date.parse(p.minute_utc) / 1000);
  const score = points.map((p) => p.score);
  const refused = points.map((p) => (p.allowed ? null : p.score));
  const series = [{ label: `P(engagement within ${Math.round(d.curve.horizon_seconds / 60)} min)`, values: score }];
  if (refused.some((v) => v !== null)) series.push({ label: "refused by a policy", values: refused, color: "#b00020" });
  const marks = [];
  const inRange = (t) => t >= x[0] && t <= x[x.length - 1];
  if (!d.suppressed) {
    const target = Date.parse(d.target_minute_utc) / 1000;
    const trigger = Date.parse(d.trigger_timestamp_utc) / 1000;
    marks.push({ x: target, label: "target", color: "#2b8a3e", dash: [] });
    if (inRange(trigger)) marks.push({ x: trigger, label: "trigger", color: "#d9480f" });
  }
  d.alternatives.forEach((a, i) => marks.push({ x: Date.parse(a.target_minute_utc) / 1000, label: `alt ${i + 1}`, color: "#868e96", dash: [2, 4] }));
  const wrap = h("figure", { class: "curve" });
  const el = h("div", { class: "chart", id: "curve" });
  wrap.append(el, h("figcaption", { class: "hint" },
    `The engine's score at each quarter hour of the window (${points.length} points; linear between them). ` +
    `Axis times in your browser's zone (${BROWSER_ZONE}); the stats above are in ${zone}.`));
  // uPlot measures its container: draw once the figure is in the page
  requestAnimationFrame(() => lineChart(el, {
    x, series, marks, yLabel: "P(engagement)", xTime: true, title: "Engagement curve over the window",
  }));
  return wrap;
}

// -- wiring -----------------------------------------------------------------------------
lookupForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const data = new FormData(lookupForm);
  lookUp(String(data.get("type")), String(data.get("value") ?? "").trim());
});
zoneForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadEngagement().then(() => { if (lastDecision) showDecision(...lastDecision); });
});
decideForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  decide();
});

document.getElementById("browser-zone").textContent = BROWSER_ZONE;
try {
  const zones = document.getElementById("zones");
  for (const z of Intl.supportedValuesOf?.("timeZone") ?? []) zones.append(h("option", { value: z }));
} catch { /* an older browser: the field still takes any zone */ }
windowDefaults();

let firstTenant = true;
onTenantChange(() => {
  const wanted = new URL(window.location.href).searchParams.get("uid");
  if (firstTenant && wanted) {
    firstTenant = false;
    lookupForm.elements.type.value = "universal_id";
    lookupForm.elements.value.value = wanted;
    lookUp("universal_id", wanted);
    return;
  }
  firstTenant = false;
  resetPerson();
  const url = new URL(window.location.href);
  url.searchParams.delete("uid");
  history.replaceState(null, "", url);
});
