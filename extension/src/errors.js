// Every way a scan can go wrong, as plain data (it is kept in chrome.storage.session) and as the words shown for
// it: a title and what to do, both message names of _locales. Pure functions.

/**
 * @typedef {object} Problem
 * @property {"config" | "unreachable" | "http" | "redirect" | "bad_response" | "scan" | "stalled" | "no_url"
 *   | "no_video_page"} kind
 * @property {number} [status] the HTTP status (kind "http")
 * @property {string} [code] the gateway's error code (kind "http") or the verdict document's (kind "scan")
 * @property {string} [message] the gateway's own message (shown small, as detail: never as the headline)
 * @property {number} [retryAfter] seconds (429, 503)
 * @property {boolean} [retryable]
 */

/** The scan error codes of the verdict document (scanner/verdict.schema.json) that have their own words. */
export const SCAN_CODES = [
  "invalid_url", "blocked_address", "unsupported_url", "download_failed", "too_large", "too_long", "not_a_video",
  "corrupt_video", "timeout", "model_unavailable", "internal_error",
];

/** Codes of a 400 answer to POST /api/v1/scans that are the URL policy's: the same words as a failed scan. */
const URL_POLICY_CODES = new Set(["invalid_url", "blocked_address", "unsupported_url"]);

/**
 * @param {number | string | null | undefined} value a Retry-After header (seconds; an HTTP date is rare here)
 * @param {number} [now] ms since the epoch
 * @returns {number | undefined}
 */
export function retryAfterSeconds(value, now = Date.now()) {
  if (value === null || value === undefined || value === "") return undefined;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? undefined : Math.max(0, Math.ceil((when - now) / 1000));
}

/**
 * @typedef {object} ErrorView
 * @property {string} title message name of the headline
 * @property {string} hint message name of what to do
 * @property {string[]} subs substitutions for both ($1...)
 * @property {string} [detail] the gateway's own words, untrusted text
 * @property {string} code a stable identifier (tests and the badge use it)
 */

/**
 * The words for a problem. A problem never comes with a verdict: callers show this instead of one.
 * @param {Problem} problem
 * @param {string} [gatewayUrl]
 * @returns {ErrorView}
 */
export function describeError(problem, gatewayUrl = "") {
  const detail = typeof problem.message === "string" && problem.message ? problem.message.slice(0, 300) : undefined;
  /** @type {(code: string, subs?: string[]) => ErrorView} */
  const view = (code, subs = []) => ({ title: `err_${code}`, hint: `hint_${code}`, subs, detail, code });
  switch (problem.kind) {
    case "config":
      return view("not_configured");
    case "unreachable":
      return view("unreachable", [gatewayUrl]);
    case "redirect":
      return view("redirect", [gatewayUrl]);
    case "bad_response":
      return view("bad_response", [gatewayUrl]);
    case "stalled":
      return view("stalled");
    case "no_url":
      return view("no_url");
    case "no_video_page":
      return view("no_video_page");
    case "scan":
      return view(`code_${SCAN_CODES.includes(problem.code ?? "") ? problem.code : "unknown"}`);
    case "http":
      break;
    default:
      return view("bad_response", [gatewayUrl]);
  }
  const status = problem.status ?? 0;
  const wait = String(problem.retryAfter ?? 60);
  if (status === 400 && URL_POLICY_CODES.has(problem.code ?? "")) return view(`code_${problem.code}`);
  if (status === 400 && problem.code === "unknown_model") return view("unknown_model");
  if (status === 400) return view("bad_request");
  if (status === 401) return view("unauthorized");
  if (status === 403) return view("forbidden");
  if (status === 404) return view("not_found");
  if (status === 413) return view("request_too_large");
  if (status === 429) return view("rate_limited", [wait]);
  if (status === 503) return view("unavailable", [wait]);
  return view("server", [String(status)]);
}
