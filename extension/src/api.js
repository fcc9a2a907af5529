// The gateway's HTTP API as the extension uses it: submit a scan, read it, list models, health. Requests carry the
// API key in X-API-Key and nothing else of the user's: no cookies, no redirects followed (a redirect would carry
// the key elsewhere). Failures are thrown as a Problem (errors.js).

import { retryAfterSeconds } from "./errors.js";

export const DEFAULT_GATEWAY = "http://127.0.0.1:8000";
const TIMEOUT_MS = 15_000;
const SCAN_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A failed request, carrying its Problem. */
export class GatewayError extends Error {
  /** @param {import("./errors.js").Problem} problem */
  constructor(problem) {
    super(problem.message ?? problem.code ?? problem.kind);
    this.problem = problem;
  }
}

/**
 * The gateway's base URL from the setting, or null when it is not an http(s) URL.
 * @param {string | undefined} raw
 */
export function gatewayBase(raw) {
  try {
    const url = new URL(String(raw ?? "").trim());
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    return `${url.origin}${url.pathname.replace(/\/+$/, "")}`;
  } catch {
    return null;
  }
}

/**
 * @typedef {object} Settings
 * @property {string} gatewayUrl
 * @property {string} [apiKey]
 * @property {string} [model] empty: the gateway's default
 * @property {boolean} [overlay]
 */

/**
 * One request to the gateway; resolves with the parsed JSON body (and headers).
 * @param {Settings} settings
 * @param {string} path starting with "/"
 * @param {{method?: string, body?: unknown, fetchImpl?: typeof fetch, timeoutMs?: number}} [options]
 * @returns {Promise<{status: number, body: any, headers: Headers}>}
 */
export async function request(settings, path, options = {}) {
  const base = gatewayBase(settings.gatewayUrl);
  if (base === null) throw new GatewayError({ kind: "config" });
  /** @type {Record<string, string>} */
  const headers = { Accept: "application/json" };
  if (settings.apiKey) headers["X-API-Key"] = settings.apiKey;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const doFetch = options.fetchImpl ?? fetch;
  let response;
  try {
    response = await doFetch(`${base}${path}`, {
      method: options.method ?? "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "omit",
      cache: "no-store",
      redirect: "manual",
      referrerPolicy: "no-referrer",
      signal: AbortSignal.timeout(options.timeoutMs ?? TIMEOUT_MS),
    });
  } catch (exc) {
    const name = /** @type {any} */ (exc)?.name;
    throw new GatewayError({ kind: "unreachable", message: name === "TimeoutError" ? "timeout" : undefined });
  }
  if (response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400)) {
    throw new GatewayError({ kind: "redirect" });
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const error = body?.error ?? {};
    throw new GatewayError({
      kind: "http",
      status: response.status,
      code: typeof error.code === "string" ? error.code : undefined,
      message: typeof error.message === "string" ? error.message : undefined,
      retryAfter: retryAfterSeconds(response.headers.get("Retry-After")),
    });
  }
  if (body === null || typeof body !== "object") throw new GatewayError({ kind: "bad_response" });
  return { status: response.status, body, headers: response.headers };
}

/**
 * Checks that the body is a scan of the API (enough of it to be used safely).
 * @param {any} body
 * @returns {import("./view.js").Scan}
 */
function asScan(body) {
  if (typeof body?.id !== "string" || !SCAN_ID.test(body.id) || typeof body.status !== "string") {
    throw new GatewayError({ kind: "bad_response" });
  }
  return body;
}

/**
 * POST /api/v1/scans.
 * @param {Settings} settings
 * @param {{url: string, pageUrl?: string | null}} target
 * @param {{fetchImpl?: typeof fetch}} [options]
 */
export async function submitScan(settings, target, options = {}) {
  /** @type {Record<string, string>} */
  const body = { url: target.url };
  if (target.pageUrl) body.page_url = target.pageUrl;
  if (settings.model) body.model = settings.model;
  const answer = await request(settings, "/api/v1/scans", { ...options, method: "POST", body });
  return asScan(answer.body);
}

/**
 * GET /api/v1/scans/<id> (built from the configured gateway, never from a URL the answer named).
 * @param {Settings} settings
 * @param {string} scanId
 * @param {{fetchImpl?: typeof fetch}} [options]
 */
export async function getScan(settings, scanId, options = {}) {
  if (!SCAN_ID.test(scanId)) throw new GatewayError({ kind: "bad_response" });
  const answer = await request(settings, `/api/v1/scans/${scanId}`, options);
  return asScan(answer.body);
}

/**
 * GET /api/v1/models.
 * @param {Settings} settings
 * @param {{fetchImpl?: typeof fetch}} [options]
 * @returns {Promise<{models: Array<{name: string, architecture: string, version: number, threshold: number,
 *   licence: string, default: boolean}>, default: string}>}
 */
export async function listModels(settings, options = {}) {
  const answer = await request(settings, "/api/v1/models", options);
  if (!Array.isArray(answer.body.models)) throw new GatewayError({ kind: "bad_response" });
  return answer.body;
}

/**
 * GET /healthz.
 * @param {Settings} settings
 * @param {{fetchImpl?: typeof fetch}} [options]
 */
export async function health(settings, options = {}) {
  const answer = await request(settings, "/healthz", options);
  return answer.body;
}
