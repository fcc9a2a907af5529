// What the extension keeps: settings and past verdicts in chrome.storage.local (never synced: the API key stays on
// this machine), each tab's scan in chrome.storage.session (the service worker is stopped when idle, so nothing
// lives in its globals). The key and age rules are pure functions, tested in node.

import { DEFAULT_GATEWAY } from "./api.js";

/** A verdict is shown again at once for this long (the gateway reuses one for 24 h by default too). */
export const CACHE_MAX_AGE_MS = 24 * 3600 * 1000;
/** At most this many verdicts are kept (the oldest go first). */
export const CACHE_MAX_ENTRIES = 200;

/** @type {import("./api.js").Settings} */
export const DEFAULT_SETTINGS = { gatewayUrl: DEFAULT_GATEWAY, apiKey: "", model: "", overlay: true };

/**
 * The cache key of a verdict: the model (empty setting: the gateway's default) and the normalised URL.
 * @param {string} model
 * @param {string} url normalised
 */
export function cacheKey(model, url) {
  return `verdict:${model || "default"}|${url}`;
}

/**
 * @param {{savedAt: number} | undefined} entry
 * @param {number} now
 * @param {number} [maxAge]
 */
export function isFresh(entry, now, maxAge = CACHE_MAX_AGE_MS) {
  return Boolean(entry) && typeof entry?.savedAt === "number" && now - entry.savedAt >= 0
    && now - entry.savedAt < maxAge;
}

/**
 * The keys to remove from the verdict cache: the stale ones, then the oldest past CACHE_MAX_ENTRIES.
 * @param {Record<string, any>} items everything in storage.local
 * @param {number} now
 */
export function keysToPrune(items, now) {
  const entries = Object.entries(items).filter(([key]) => key.startsWith("verdict:"));
  const stale = entries.filter(([, value]) => !isFresh(value, now)).map(([key]) => key);
  const fresh = entries.filter(([, value]) => isFresh(value, now))
    .sort((a, b) => b[1].savedAt - a[1].savedAt);
  return [...stale, ...fresh.slice(CACHE_MAX_ENTRIES).map(([key]) => key)];
}

/** @returns {Promise<import("./api.js").Settings>} */
export async function getSettings() {
  const { settings } = await chrome.storage.local.get("settings");
  return { ...DEFAULT_SETTINGS, ...(settings ?? {}) };
}

/** @param {Partial<import("./api.js").Settings>} changes */
export async function saveSettings(changes) {
  const settings = { ...(await getSettings()), ...changes };
  await chrome.storage.local.set({ settings });
  return settings;
}

/**
 * @param {string} model
 * @param {string} url normalised
 * @returns {Promise<{savedAt: number, scan: any, gatewayUrl: string} | null>}
 */
export async function cachedVerdict(model, url) {
  const key = cacheKey(model, url);
  const { [key]: entry } = await chrome.storage.local.get(key);
  return isFresh(entry, Date.now()) ? entry : null;
}

/**
 * Keeps a finished scan (done or failed with a verdict document) for its URL.
 * @param {string} model
 * @param {string} url normalised
 * @param {any} scan
 * @param {string} gatewayUrl
 */
export async function keepVerdict(model, url, scan, gatewayUrl) {
  const now = Date.now();
  await chrome.storage.local.set({ [cacheKey(model, url)]: { savedAt: now, scan, gatewayUrl } });
  const stale = keysToPrune(await chrome.storage.local.get(null), now);
  if (stale.length) await chrome.storage.local.remove(stale);
}

/** @param {number} tabId */
export const tabKey = (tabId) => `tab:${tabId}`;

/**
 * @typedef {object} TabState
 * @property {"running" | "done" | "error" | "cancelled"} state "cancelled": the user stopped waiting (the scan goes on)
 * @property {string} url
 * @property {string} pageUrl
 * @property {string} via
 * @property {string} model the model setting when it started
 * @property {string} gatewayUrl
 * @property {number} startedAt
 * @property {string} [scanId]
 * @property {any} [scan] the last scan JSON read (progress, or the finished scan)
 * @property {import("./errors.js").Problem} [problem] a request that failed (no scan, or no answer)
 * @property {boolean} [navigated] the tab left the page while the scan ran: its verdict only goes to the cache
 */

/**
 * @param {number} tabId
 * @returns {Promise<TabState | null>}
 */
export async function getTabState(tabId) {
  const key = tabKey(tabId);
  const { [key]: state } = await chrome.storage.session.get(key);
  return state ?? null;
}

/**
 * @param {number} tabId
 * @param {TabState} state
 */
export async function setTabState(tabId, state) {
  await chrome.storage.session.set({ [tabKey(tabId)]: state });
}

/** @returns {Promise<Array<[number, TabState]>>} every tab whose scan is still running */
export async function runningTabs() {
  const items = await chrome.storage.session.get(null);
  return Object.entries(items)
    .filter(([key, value]) => key.startsWith("tab:") && value?.state === "running")
    .map(([key, value]) => [Number(key.slice(4)), value]);
}
