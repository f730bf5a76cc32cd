// Health: every backend's state as GET /health reports it, refreshed every few seconds.
// /health answers 503 with the same body when a backend is down, so it is read with fetch
// directly (api() would turn that answer into an error and drop the body).
import { h, clear, showError, fmtDateTime, poll } from "./ui.js";

const REFRESH_MS = 5000;
const WORDS = { ok: "ok", degraded: "degraded", down: "down" };
const overall = document.getElementById("overall");
const refreshed = document.getElementById("refreshed");
const errors = document.getElementById("errors");
const backends = document.getElementById("backends");

function label(port) {
  const text = String(port).replace(/[_-]+/g, " ");
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function card(b) {
  const info = Object.entries(b.info ?? {});
  return h("section", { class: `card backend ${b.state}`, "aria-label": `${label(b.port)}: ${WORDS[b.state] ?? b.state}` },
    h("h3", {}, label(b.port), " ", h("span", { class: `badge ${b.state}` }, WORDS[b.state] ?? b.state)),
    h("p", { class: "muted" }, b.backend),
    b.detail ? h("p", { class: "detail" }, b.detail) : null,
    info.length ? h("dl", { class: "info" }, info.map(([k, v]) => [h("dt", {}, label(k)), h("dd", {}, String(v))])) : null);
}

async function read() {
  let response;
  try {
    response = await fetch("/health", { headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch {
    throw new Error("SendFlowr could not be reached: check that the service is running.");
  }
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!body || !Array.isArray(body.backends)) {
    throw new Error(`/health answered ${response.status} without a health report.`);
  }
  return body;
}

async function refresh() {
  try {
    const report = await read();
    clear(errors);
    const down = report.backends.filter((b) => b.state !== "ok").map((b) => label(b.port));
    clear(overall).append(
      h("span", { class: `badge ${report.status}` }, WORDS[report.status] ?? report.status), " ",
      report.status === "ok"
        ? `every backend is ok (${report.backends.length})`
        : `${down.join(", ")} ${down.length === 1 ? "is" : "are"} not ok`,
      h("span", { class: "muted" }, ` · SendFlowr ${report.version}`));
    clear(backends).append(...report.backends.map(card));
    refreshed.textContent = `Checked ${fmtDateTime(new Date().toISOString())}; refreshed every ${REFRESH_MS / 1000} s.`;
  } catch (err) {
    showError(errors, err);
    clear(overall).append(h("span", { class: "badge down" }, "unknown"), " the last check failed");
  }
}

poll(refresh, REFRESH_MS);
