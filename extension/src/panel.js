// The popup and the side panel (same page, `data-mode` on <body>): the URL that will be scanned, the scan's
// progress, the verdict and its timeline, a verdict seen before, every error. The service worker does the scanning;
// this page asks it to start, ticks it to poll fast while open, and draws what chrome.storage holds.

import { describeError } from "./errors.js";
import { localize, t } from "./i18n.js";
import { pageVideos, seekVideo } from "./inject.js";
import { el, renderError, renderProgress, renderVerdict } from "./render.js";
import { cachedVerdict, getSettings, getTabState, tabKey } from "./store.js";
import { chooseTarget } from "./urls.js";
import { formatTime, scanView } from "./view.js";

/** While a scan runs and this page is open, the worker is ticked this often (it polls the gateway on each). */
export const TICK_MS = 250;

const params = new URLSearchParams(location.search);
const mode = document.body.dataset.mode ?? "popup";
const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const targetBox = /** @type {HTMLElement} */ (document.getElementById("target"));
const actions = /** @type {HTMLElement} */ (document.getElementById("actions"));

/** @type {number | null} */
let tabId = null;
/** @type {import("./urls.js").ScanTarget | null} */
let target = null;
/** @type {import("./errors.js").Problem | null} */
let targetProblem = null;
let forceIdle = false;
/** @type {import("./api.js").Settings} */
let settings;
/** @type {chrome.runtime.Port | null} */
let port = null;
let ticking = /** @type {ReturnType<typeof setInterval> | undefined} */ (undefined);
let submitting = false;

async function start() {
  localize(document);
  settings = await getSettings();
  const fromQuery = Number.parseInt(params.get("tab") ?? "", 10);
  tabId = Number.isInteger(fromQuery) ? fromQuery : await activeTabId();
  await findTarget();
  await render();
  chrome.storage.onChanged.addListener((changes, area) => {
    if (area === "session" && tabId !== null && tabKey(tabId) in changes) void render();
    if (area === "local" && "settings" in changes) {
      void getSettings().then((s) => {
        settings = s;
        return render();
      });
    }
  });
  if (mode === "panel") {
    chrome.tabs.onActivated.addListener((info) => {
      tabId = info.tabId;
      forceIdle = false;
      void findTarget().then(render);
    });
  }
}

async function activeTabId() {
  const [tab] = await chrome.tabs.query({ active: true, currentWindow: true });
  return tab?.id ?? null;
}

/** What this tab would scan: its page, its main video's file or its player's frame (urls.js decides). */
async function findTarget() {
  target = null;
  targetProblem = null;
  if (tabId === null) {
    targetProblem = { kind: "no_video_page" };
    return;
  }
  /** @type {chrome.tabs.Tab | undefined} */
  let tab;
  try {
    tab = await chrome.tabs.get(tabId);
  } catch {
    targetProblem = { kind: "no_video_page" };
    return;
  }
  /** @type {Array<ReturnType<typeof pageVideos>>} */
  let frames = [];
  try {
    const results = await chrome.scripting.executeScript({ target: { tabId, allFrames: true }, func: pageVideos });
    frames = results.map((r) => r.result).filter((r) => r && typeof r === "object");
  } catch {
    // a page the extension may not read (the browser's own, a store): its URL is all there is
  }
  const pageUrl = tab.url ?? frames.find((f) => f.top)?.frameUrl;
  if (!pageUrl) {
    const state = await getTabState(tabId);  // a scan started from the context menu still shows here
    if (state) target = { url: state.url, pageUrl: state.pageUrl, via: /** @type {any} */ (state.via) };
    else targetProblem = { kind: "no_video_page" };
    return;
  }
  target = chooseTarget({
    pageUrl,
    videos: frames.flatMap((f) => f.videos ?? []),
    embeds: frames.flatMap((f) => f.embeds ?? []),
  });
  if (target === null) targetProblem = { kind: "no_url" };
}

let drawing = 0;

/** Draws the page from the tab's state, or a verdict kept from before, or the Scan button. */
async function render() {
  const turn = ++drawing;  // storage events come in bursts: only the latest drawing lands
  const state = tabId === null ? null : await getTabState(tabId);
  const mine = state && target && (state.url === target.url || state.pageUrl === target.pageUrl)
    && state.state !== "cancelled" ? state : null;
  const cancelled = state && target && state.url === target.url && state.state === "cancelled";
  renderTarget();
  /** @type {Node[]} */
  const content = [];
  /** @type {Node[]} */
  const buttons = [];
  const gateway = mine?.gatewayUrl ?? settings.gatewayUrl;
  if (targetProblem) {
    content.push(renderError(describeError(targetProblem)));
  } else if (mine && !forceIdle && mine.state === "running") {
    const view = mine.scan ? scanView(mine.scan) : { kind: "progress", stage: "stage_submitting", pct: null };
    content.push(renderProgress(/** @type {any} */ (view), cancelWait));
  } else if (mine && !forceIdle && mine.state === "error" && mine.problem) {
    content.push(renderError(describeError(mine.problem, gateway)));
    buttons.push(scanButton("scanAgain"));
  } else if (mine && !forceIdle && mine.state === "done" && mine.scan) {
    content.push(renderScan(mine.scan, gateway, null));
    buttons.push(scanButton("rescan"));
  } else {
    const cached = target ? await cachedVerdict(settings.model ?? "", target.url) : null;
    if (cached && !forceIdle) {
      content.push(renderScan(cached.scan, cached.gatewayUrl, cached.savedAt));
      buttons.push(scanButton("rescan"));
    } else {
      if (cancelled) content.push(el("p", { class: "note", text: t("cancelled") }));
      buttons.push(scanButton("scanThisVideo"));
    }
  }
  if (mode === "popup" && (chrome.sidePanel?.open || globalThis.browser?.sidebarAction?.open)) {
    const panel = el("button", { type: "button", class: "secondary open-panel", text: t("openPanel") });
    panel.addEventListener("click", openPanel);
    buttons.push(panel);
  }
  const options = el("button", { type: "button", class: "link options", text: t("settings") });
  options.addEventListener("click", () => void chrome.runtime.openOptionsPage());
  buttons.push(options);
  if (turn !== drawing) return;
  main.replaceChildren(...content);
  actions.replaceChildren(...buttons);
  setTicking(Boolean(mine && mine.state === "running"));
}

/**
 * @param {any} scan
 * @param {string} gateway
 * @param {number | null} savedAt set for a verdict from the cache
 */
function renderScan(scan, gateway, savedAt) {
  const view = /** @type {any} */ (scanView(scan, { gatewayUrl: gateway }));
  const box = el("div", { class: "result" });
  if (savedAt !== null) box.append(el("p", { class: "seen-before", text: t("seenBefore", [age(Date.now() - savedAt)]) }));
  box.append(view.kind === "verdict" ? renderVerdict(view, { onSeek: seek }) : renderError(view.error, view.reportUrl));
  return box;
}

/** @param {number} ms */
function age(ms) {
  const minutes = Math.max(0, Math.round(ms / 60000));
  if (minutes < 1) return t("agoJustNow");
  if (minutes < 60) return t("agoMinutes", [String(minutes)]);
  return t("agoHours", [String(Math.round(minutes / 60))]);
}

function renderTarget() {
  if (!target) {
    targetBox.replaceChildren();
    return;
  }
  targetBox.replaceChildren(
    el("span", { class: "label", text: t("willScan") }),
    el("code", { class: "target-url", title: target.url, text: target.url }),
    el("span", { class: "via", "data-via": target.via, text: t(`via_${target.via}`) }),
  );
}

/** @param {string} text message name */
function scanButton(text) {
  const button = /** @type {HTMLButtonElement} */ (el("button", { type: "button", class: "scan primary", text: t(text) }));
  button.disabled = submitting || target === null;
  button.addEventListener("click", () => void scan());
  return button;
}

async function scan() {
  if (target === null || tabId === null || submitting) return;
  submitting = true;
  forceIdle = false;
  main.replaceChildren(renderProgress({ stage: "stage_submitting", pct: null }, cancelWait));
  setTicking(true);
  try {
    await chrome.runtime.sendMessage({ type: "scan", tabId, target });
  } finally {
    submitting = false;
    await render();
  }
}

async function cancelWait() {
  if (tabId === null) return;
  await chrome.runtime.sendMessage({ type: "cancel", tabId });
  forceIdle = true;
  await render();
  forceIdle = false;
}

/** @param {boolean} on */
function setTicking(on) {
  if (!on) {
    clearInterval(ticking);
    ticking = undefined;
    return;
  }
  if (ticking !== undefined) return;
  ticking = setInterval(() => {
    try {
      port ??= connect();
      port.postMessage("tick");
    } catch {
      port = null;  // the worker was stopped: the next tick wakes a new one
    }
  }, TICK_MS);
}

function connect() {
  const p = chrome.runtime.connect({ name: "watch" });
  p.onDisconnect.addListener(() => {
    port = null;
  });
  return p;
}

/**
 * Moves the page's video to `seconds` (a frame of another site cannot be reached: said so).
 * @param {number} seconds
 */
async function seek(seconds) {
  const status = document.querySelector(".seek-status");
  const say = (/** @type {string} */ text) => {
    if (status) status.textContent = text;
  };
  if (tabId === null) return;
  try {
    const results = await chrome.scripting.executeScript({
      target: { tabId, allFrames: true }, func: seekVideo, args: [seconds],
    });
    const moved = results.map((r) => r.result).find((r) => r?.ok);
    say(moved ? t("seekDone", [formatTime(moved.currentTime ?? seconds)]) : t("seekUnreachable", [formatTime(seconds)]));
  } catch {
    say(t("seekUnreachable", [formatTime(seconds)]));
  }
}

function openPanel() {
  if (tabId === null) return;
  if (chrome.sidePanel?.open) {
    chrome.sidePanel.open({ tabId }).then(() => window.close(), () => {});
  } else {
    globalThis.browser.sidebarAction.open().then(() => window.close(), () => {});
  }
}

void start();
