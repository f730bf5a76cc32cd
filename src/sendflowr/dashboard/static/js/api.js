// The public JSON API, as the dashboard calls it: same routes as any client, authenticated by
// the session cookie, with the page's CSRF token on requests that change anything.

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

export class ApiError extends Error {
  constructor(status, message, errors) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.errors = errors; // [{loc, msg, type}] from the API's error body
  }
}

export function apiUrl(path, query) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((item) => url.searchParams.append(k, item));
    else url.searchParams.set(k, String(v));
  }
  return url.pathname + url.search;
}

function describe(errors) {
  return errors
    .map((e) => {
      const where = (e.loc ?? []).filter((p) => p !== "body" && p !== "query" && p !== "path");
      return where.length ? `${where.join(".")}: ${e.msg}` : e.msg;
    })
    .join("; ");
}

export async function api(path, { method = "GET", query, body } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = csrf();
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), {
      method, headers, body: payload, credentials: "same-origin",
    });
  } catch (err) {
    throw new ApiError(0, "SendFlowr could not be reached: check that the service is running.", []);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (response.ok) return data;
  if (response.status === 401) {
    const here = window.location.pathname + window.location.search;
    window.location.assign(`/ui/login?next=${encodeURIComponent(here)}`);
  }
  const errors = Array.isArray(data?.detail) ? data.detail : [];
  const message = errors.length
    ? describe(errors)
    : `${response.status} ${response.statusText || "error"}`;
  throw new ApiError(response.status, message, errors);
}
