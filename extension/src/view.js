// The gateway's scan JSON (server/api.py scan_json, with the verdict document of scanner/verdict.schema.json) made
// into what the popup and the side panel show: words by message name, numbers rounded, the timeline's geometry.
// Pure functions: everything from the document is data here, never markup (titles and URLs are the site's).

import { describeError } from "./errors.js";

export const LABELS = ["fake", "real", "uncertain", "no_face"];

/** The progress stages the worker reports (server/tasks.py), as the words the popup shows. */
const STAGES = { fetch: "stage_fetch", analyze: "stage_analyze", classify: "stage_classify" };

export const CHART = { width: 320, height: 96, left: 28, right: 8, top: 6, bottom: 18 };

const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
const MAX_FACE_CHARS = 400_000;
export const MAX_FACES = 6;

/**
 * Seconds as m:ss (h:mm:ss past an hour).
 * @param {number} seconds
 */
export function formatTime(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** @param {unknown} p */
const isProbability = (p) => typeof p === "number" && Number.isFinite(p) && p >= 0 && p <= 1;

/** @param {number | null | undefined} p */
export const percent = (p) => (isProbability(p) ? Math.round(/** @type {number} */ (p) * 100) : null);

/**
 * The label of one score against the model's threshold and uncertain band (as the scanner labels the video).
 * @param {number} p
 * @param {number} threshold
 * @param {number} band
 */
export function scoreLabel(p, threshold, band) {
  if (Math.abs(p - threshold) < band) return "uncertain";
  return p >= threshold ? "fake" : "real";
}

/**
 * An http(s) URL as a string, or null: links are only ever made to those.
 * @param {unknown} raw
 */
export function safeHttpUrl(raw) {
  if (typeof raw !== "string") return null;
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.toString() : null;
  } catch {
    return null;
  }
}

/**
 * @typedef {object} TimelinePoint
 * @property {number} t
 * @property {number} x
 * @property {number | null} y null for a sampled frame without a face
 * @property {number | null} pct
 * @property {number} faces
 */

/**
 * The timeline chart's geometry in CHART's coordinate space.
 * @param {Array<{t: number, fake_probability: number | null, faces: number}>} timeline
 * @param {number | null | undefined} duration
 * @param {number} threshold
 * @param {number} band
 */
export function timelineGeometry(timeline, duration, threshold, band) {
  const { width, height, left, right, top, bottom } = CHART;
  const points = (timeline ?? []).filter((p) => typeof p?.t === "number" && p.t >= 0);
  const last = points.length ? Math.max(...points.map((p) => p.t)) : 0;
  const span = Math.max(Number(duration) || 0, last, 0.001);
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const x = (/** @type {number} */ t) => round2(left + (Math.min(t, span) / span) * plotW);
  const y = (/** @type {number} */ p) => round2(top + (1 - p) * plotH);
  /** @type {TimelinePoint[]} */
  const out = points.map((p) => ({
    t: p.t,
    x: x(p.t),
    y: isProbability(p.fake_probability) ? y(/** @type {number} */ (p.fake_probability)) : null,
    pct: percent(p.fake_probability),
    faces: p.faces ?? 0,
  }));
  /** @type {string[]} */
  const lines = [];
  let run = [];
  for (const p of out) {
    if (p.y === null) {
      if (run.length > 1) lines.push(run.join(" "));
      run = [];
    } else {
      run.push(`${p.x},${p.y}`);
    }
  }
  if (run.length > 1) lines.push(run.join(" "));
  const bandTop = y(Math.min(1, threshold + band));
  const bandBottom = y(Math.max(0, threshold - band));
  return {
    ...CHART,
    span,
    points: out,
    lines,
    thresholdY: y(threshold),
    band: { y: bandTop, height: round2(bandBottom - bandTop) },
    ticks: [0, span / 2, span].map((t) => ({ x: x(t), text: formatTime(t) })),
    /** The time at chart x (for a click between points). */
    timeAt: (/** @type {number} */ cx) => Math.max(0, Math.min(span, ((cx - left) / plotW) * span)),
  };
}

/** @param {number} v */
function round2(v) {
  return Math.round(v * 100) / 100;
}

/**
 * The scan's shareable report page: the gateway's own `report_url` when it is on the configured gateway (it may
 * carry the submitter's page token), else `<gateway>/scans/<id>`. Null when the gateway is not http(s).
 * @param {{id?: string, report_url?: string}} scan
 * @param {string} gateway
 */
export function reportLink(scan, gateway) {
  const base = safeHttpUrl(gateway);
  if (!scan.id || base === null) return null;
  const own = `${gateway.trim().replace(/\/+$/, "")}/scans/${encodeURIComponent(scan.id)}`;
  const given = safeHttpUrl(scan.report_url);
  if (given !== null) {
    const url = new URL(given);
    if (url.origin === new URL(base).origin && `${url.origin}${url.pathname}` === own) return given;
  }
  return safeHttpUrl(own);
}

/**
 * @typedef {object} Scan the gateway's scan JSON
 * @property {string} id
 * @property {string} status queued, running, done or failed
 * @property {{stage: string, fraction: number} | null} [progress]
 * @property {{name: string, version: number}} [model]
 * @property {string} [url]
 * @property {any} [result] the verdict document
 * @property {string} [report_url]
 */

/**
 * What to show for a scan: `kind` is "progress" (queued or running), "verdict" (done) or "error" (failed).
 * A failed scan never carries verdict fields.
 * @param {Scan} scan
 * @param {{gatewayUrl?: string}} [options]
 */
export function scanView(scan, options = {}) {
  const reportUrl = reportLink(scan, options.gatewayUrl ?? "");
  if (scan.status === "queued" || scan.status === "running") {
    const stage = scan.status === "queued" ? "stage_queued" : STAGES[/** @type {keyof STAGES} */ (scan.progress?.stage)] ?? "stage_running";
    const fraction = Number(scan.progress?.fraction);
    return { kind: "progress", stage, pct: Number.isFinite(fraction) ? Math.round(Math.min(1, Math.max(0, fraction)) * 100) : null };
  }
  const doc = scan.result ?? {};
  if (scan.status !== "done" || doc.status !== "done" || !doc.verdict || !LABELS.includes(doc.verdict.label)) {
    const error = doc.error ?? {};
    return { kind: "error", error: describeError({ kind: "scan", code: error.code, message: error.message }), reportUrl };
  }
  const v = doc.verdict;
  const threshold = isProbability(v.threshold) ? v.threshold : 0.5;
  const band = typeof v.uncertain_band === "number" ? v.uncertain_band : 0;
  const source = doc.source ?? {};
  const people = (doc.people ?? []).map((/** @type {any} */ p) => ({
    id: p.id,
    name: String(Number(p.id) + 1),
    pct: percent(p.fake_probability),
    label: isProbability(p.fake_probability) ? scoreLabel(p.fake_probability, threshold, band) : "no_face",
    faces: p.faces,
    firstT: p.first_t,
    lastT: p.last_t,
    seen: `${formatTime(p.first_t)}–${formatTime(p.last_t)}`,
  })).sort((/** @type {any} */ a, /** @type {any} */ b) => (b.pct ?? -1) - (a.pct ?? -1));
  const faces = (doc.top_faces ?? [])
    .filter((/** @type {any} */ f) => typeof f.jpeg_base64 === "string" && f.jpeg_base64.length < MAX_FACE_CHARS
      && BASE64.test(f.jpeg_base64))
    .sort((/** @type {any} */ a, /** @type {any} */ b) => b.fake_probability - a.fake_probability)
    .slice(0, MAX_FACES)
    .map((/** @type {any} */ f) => ({
      src: `data:image/jpeg;base64,${f.jpeg_base64}`,
      t: f.t,
      time: formatTime(f.t),
      person: String(Number(f.person) + 1),
      pct: percent(f.fake_probability),
    }));
  const model = doc.model ?? scan.model ?? {};
  return {
    kind: "verdict",
    label: v.label,
    title: `label_${v.label}`,
    meaning: `meaning_${v.label}`,
    pct: percent(v.fake_probability),
    confidencePct: percent(v.confidence),
    thresholdPct: percent(threshold),
    model: `${model.name ?? "?"} v${model.version ?? "?"}`,
    people,
    timeline: timelineGeometry(doc.timeline ?? [], source.duration_s, threshold, band),
    faces,
    facesAnalyzed: doc.faces_analyzed ?? 0,
    framesSampled: doc.frames_sampled ?? 0,
    sourceTitle: typeof source.title === "string" ? source.title.slice(0, 200) : null,
    sourceUrl: safeHttpUrl(source.url),
    reportUrl,
  };
}

/** The badge for a tab's state: text is a message name, colour a CSS colour. */
export const BADGES = {
  running: { text: "badge_running", color: "#1565c0" },
  fake: { text: "badge_fake", color: "#c62828" },
  real: { text: "badge_real", color: "#2e7d32" },
  uncertain: { text: "badge_uncertain", color: "#f9a825" },
  no_face: { text: "badge_no_face", color: "#616161" },
  failed: { text: "badge_failed", color: "#4e342e" },
};

/**
 * Which badge a scan shows.
 * @param {Scan} scan
 * @returns {keyof BADGES}
 */
export function badgeFor(scan) {
  if (scan.status === "queued" || scan.status === "running") return "running";
  const label = scan.result?.verdict?.label;
  if (scan.status === "done" && scan.result?.status === "done" && LABELS.includes(label)) {
    return /** @type {keyof BADGES} */ (label);
  }
  return "failed";
}
