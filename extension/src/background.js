// The service worker (an event page in Firefox): starts scans, follows them to the end, sets each tab's badge and
// the on-page label. It is stopped whenever it idles, so every listener is registered at the top level and every
// pending scan lives in chrome.storage.session; the popup's ticks poll fast while it is open, chrome.alarms wakes
// the worker when nothing else does.

import { GatewayError, gatewayBase, getScan, submitScan } from "./api.js";
import { t } from "./i18n.js";
import { showLabel } from "./inject.js";
import {
  getSettings, getTabState, keepVerdict, runningTabs, setTabState, tabKey,
} from "./store.js";
import { chooseMenuTarget } from "./urls.js";
import { BADGES, badgeFor, percent, reportLink } from "./view.js";

const MENU_ID = "mesoscan-scan";
const ALARM = "mesoscan-poll";
/** While the worker lives it polls this often by itself; the open popup ticks faster. */
const WORKER_POLL_MS = 1000;
/** Woken by an alarm after this when the worker was stopped (browsers may round it up to 30 s). */
const ALARM_DELAY_MS = 2000;
/** A scan with no end after this long is given up ("stalled"): the gateway's own limit is 10 min. */
export const STALL_MS = 15 * 60 * 1000;

// --- top-level listeners (a worker woken by an event must find them registered at once) --------------------------

chrome.runtime.onInstalled.addListener(() => {
  chrome.contextMenus.removeAll(() => {
    chrome.contextMenus.create({ id: MENU_ID, title: t("menuScan"), contexts: ["video", "link", "page", "frame"] });
  });
});
chrome.contextMenus.onClicked.addListener(onMenuClick);
chrome.alarms.onAlarm.addListener((alarm) => {
  if (alarm.name === ALARM) void pollAll();
});
chrome.runtime.onMessage.addListener(onMessage);
chrome.runtime.onConnect.addListener((port) => {
  if (port.name !== "watch") return;
  port.onMessage.addListener(() => void pollAll());
});
chrome.tabs.onRemoved.addListener((tabId) => void chrome.storage.session.remove(tabKey(tabId)));
chrome.tabs.onUpdated.addListener((tabId, change) => {
  if (change.status === "loading") void onNavigated(tabId);
});
void resume();

// --- scans -----------------------------------------------------------------------------------------------------

/**
 * Starts a scan for a tab (or joins the gateway's identical one) and records it.
 * @param {number} tabId
 * @param {import("./urls.js").ScanTarget} target
 * @returns {Promise<import("./store.js").TabState>}
 */
export async function startScan(tabId, target) {
  const settings = await getSettings();
  /** @type {import("./store.js").TabState} */
  const state = {
    state: "running", url: target.url, pageUrl: target.pageUrl, via: target.via, model: settings.model ?? "",
    gatewayUrl: gatewayBase(settings.gatewayUrl) ?? settings.gatewayUrl, startedAt: Date.now(),
  };
  await setTabState(tabId, state);
  await setBadge(tabId, "running");
  try {
    const scan = await submitScan(settings, target);
    if (scan.status === "done" || scan.status === "failed") return await finish(tabId, { ...state, scanId: scan.id }, scan);
    const running = { ...state, scanId: scan.id, scan };
    await setTabState(tabId, running);
    schedule();
    return running;
  } catch (exc) {
    return await fail(tabId, state, problemOf(exc));
  }
}

/** @param {unknown} exc */
function problemOf(exc) {
  if (exc instanceof GatewayError) return exc.problem;
  return /** @type {import("./errors.js").Problem} */ ({ kind: "bad_response", message: String(exc) });
}

/**
 * @param {number} tabId
 * @param {import("./store.js").TabState} state
 * @param {import("./errors.js").Problem} problem
 */
async function fail(tabId, state, problem) {
  const failed = { ...state, state: /** @type {const} */ ("error"), problem };
  await setTabState(tabId, failed);
  await setBadge(tabId, "failed");
  return failed;
}

/**
 * A scan reached its end: keep a verdict for the URL, set the badge, put the label on the page.
 * @param {number} tabId
 * @param {import("./store.js").TabState} state
 * @param {any} scan
 */
async function finish(tabId, state, scan) {
  const done = { ...state, state: /** @type {const} */ ("done"), scan };
  if (scan.status === "done") await keepVerdict(state.model, state.url, scan, state.gatewayUrl);
  if (state.navigated) {  // the tab shows another page now: the verdict waits in the cache for a revisit
    await chrome.storage.session.remove(tabKey(tabId));
    return done;
  }
  await setTabState(tabId, done);
  const badge = badgeFor(scan);
  await setBadge(tabId, badge);
  const settings = await getSettings();
  if (settings.overlay !== false && scan.status === "done") await labelPage(tabId, scan, state);
  return done;
}

let polling = /** @type {Promise<void> | null} */ (null);

/** Reads every running scan once (one pass at a time) and reschedules while any is left. */
export function pollAll() {
  polling ??= pollOnce().finally(() => {
    polling = null;
  });
  return polling;
}

async function pollOnce() {
  const settings = await getSettings();
  const tabs = await runningTabs();
  await Promise.all(tabs.map(async ([tabId, state]) => {
    if (!state.scanId) return;
    if (Date.now() - state.startedAt > STALL_MS) {
      await fail(tabId, state, { kind: "stalled" });
      return;
    }
    try {
      const scan = await getScan({ ...settings, gatewayUrl: state.gatewayUrl }, state.scanId);
      const current = await getTabState(tabId);  // cancelled or replaced meanwhile?
      if (current?.state !== "running" || current.scanId !== state.scanId) return;
      if (scan.status === "done" || scan.status === "failed") {
        await finish(tabId, current, scan);
      } else if (JSON.stringify(scan.progress) !== JSON.stringify(current.scan?.progress)
        || scan.status !== current.scan?.status) {
        await setTabState(tabId, { ...current, scan });
      }
    } catch (exc) {
      const problem = problemOf(exc);
      // A gateway briefly unreachable or busy is waited out; anything else ends the wait.
      if (problem.kind === "unreachable" || (problem.kind === "http" && [429, 503].includes(problem.status ?? 0))) return;
      await fail(tabId, state, problem);
    }
  }));
  if ((await runningTabs()).length) schedule();
}

let timer = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined);

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(() => void pollAll(), WORKER_POLL_MS);
  chrome.alarms.create(ALARM, { when: Date.now() + ALARM_DELAY_MS });
}

/** A worker (re)started: pick up the scans a stopped one left. */
async function resume() {
  if ((await runningTabs()).length) schedule();
}

/**
 * The tab loads a page: a finished state belongs to the old one; a running scan goes on, for the cache only.
 * @param {number} tabId
 */
async function onNavigated(tabId) {
  const state = await getTabState(tabId);
  if (state === null) return;
  if (state.state === "running") {
    await setTabState(tabId, { ...state, navigated: true });
  } else if (state.state !== "running") {
    await chrome.storage.session.remove(tabKey(tabId));
  }
  await setBadge(tabId, null);
}

/**
 * Stops waiting for a tab's scan (the gateway goes on with it; a later scan of the URL joins or reuses it).
 * @param {number} tabId
 */
async function cancelWait(tabId) {
  const state = await getTabState(tabId);
  if (state?.state === "running") await setTabState(tabId, { ...state, state: "cancelled" });
  await setBadge(tabId, null);
}

// --- badge and page label ----------------------------------------------------------------------------------------

/**
 * @param {number} tabId
 * @param {keyof BADGES | null} kind
 */
async function setBadge(tabId, kind) {
  try {
    if (kind === null) {
      await chrome.action.setBadgeText({ tabId, text: "" });
      return;
    }
    const badge = BADGES[kind];
    await chrome.action.setBadgeBackgroundColor({ tabId, color: badge.color });
    await chrome.action.setBadgeText({ tabId, text: t(badge.text) });
    await chrome.action.setTitle({ tabId, title: `${t("actionTitle")}: ${t(`badgeTitle_${kind}`)}` });
  } catch {
    // the tab is gone
  }
}

/**
 * Puts the verdict label next to the scanned video (a page the extension may not script is left alone).
 * @param {number} tabId
 * @param {any} scan
 * @param {import("./store.js").TabState} state
 */
async function labelPage(tabId, scan, state) {
  const kind = badgeFor(scan);
  const pct = percent(scan.result?.verdict?.fake_probability);
  const label = {
    text: `MesoScan: ${t(`label_${kind}`)}`,
    detail: pct === null ? "" : t("overlayScore", [String(pct)]),
    color: BADGES[kind].color,
    link: reportLink(scan, state.gatewayUrl),
    linkText: t("overlayReport"),
    close: t("overlayClose"),
    src: state.via === "media" ? state.url : undefined,
  };
  try {
    await chrome.scripting.executeScript({ target: { tabId, allFrames: true }, func: showLabel, args: [label] });
  } catch {
    // no access to the page (it navigated, or it is the browser's own)
  }
}

// --- entry points ------------------------------------------------------------------------------------------------

/**
 * @param {chrome.contextMenus.OnClickData} info
 * @param {chrome.tabs.Tab | undefined} tab
 */
function onMenuClick(info, tab) {
  if (info.menuItemId !== MENU_ID || tab?.id === undefined || tab.id < 0) return;
  openPanel(tab.id);  // inside the click's user gesture
  const target = chooseMenuTarget(info, tab.url);
  if (target === null) {
    void fail(tab.id, /** @type {any} */ ({ state: "error", url: "", pageUrl: "", via: "page", model: "",
      gatewayUrl: "", startedAt: Date.now() }), { kind: "no_url" });
    return;
  }
  void startScan(tab.id, target);
}

/** @param {number} tabId */
function openPanel(tabId) {
  try {
    if (chrome.sidePanel?.open) {
      chrome.sidePanel.open({ tabId }).catch(() => {});
    } else if (globalThis.browser?.sidebarAction?.open) {
      globalThis.browser.sidebarAction.open().catch(() => {});
    }
  } catch {
    // no panel in this browser: the badge and the popup tell the result
  }
}

/**
 * Messages from the popup and the side panel.
 * @param {any} message
 * @param {chrome.runtime.MessageSender} sender
 * @param {(answer: unknown) => void} reply
 */
function onMessage(message, sender, reply) {
  if (sender.id !== chrome.runtime.id) return false;
  if (message?.type === "scan" && Number.isInteger(message.tabId) && message.target?.url) {
    startScan(message.tabId, message.target).then(reply, (exc) => reply({ state: "error", problem: problemOf(exc) }));
    return true;
  }
  if (message?.type === "cancel" && Number.isInteger(message.tabId)) {
    cancelWait(message.tabId).then(() => reply({ ok: true }));
    return true;
  }
  if (message?.type === "label" && Number.isInteger(message.tabId)) {
    getTabState(message.tabId).then(async (state) => {
      if (state?.state === "done" && state.scan?.status === "done") await labelPage(message.tabId, state.scan, state);
      reply({ ok: true });
    });
    return true;
  }
  return false;
}

// For the developer console and the end-to-end tests (the worker's module scope is not reachable otherwise).
globalThis.mesoscan = { startScan, pollAll, onMenuClick, MENU_ID };
