// DOM for the popup and the side panel, built node by node from view.js's view models: text goes in through
// textContent, links only to http(s) URLs, images only as base64 JPEG data URLs; never parsed as markup.

import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";

/**
 * @param {string} tag
 * @param {Record<string, string | number | boolean | null | undefined>} [attrs] `text` sets textContent
 * @param {Array<Node | string | null | undefined | false>} children
 * @returns {HTMLElement}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/**
 * @param {string} tag
 * @param {Record<string, string | number>} attrs
 */
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

/**
 * @param {ReturnType<typeof import("./view.js").timelineGeometry>} g
 * @param {(t: number) => void} onSeek
 */
export function timelineSvg(g, onSeek) {
  const root = svg("svg", { class: "timeline", viewBox: `0 0 ${g.width} ${g.height}`, role: "img" });
  root.setAttribute("aria-label", t("timelineAria"));
  const plotRight = g.width - g.right;
  const plotBottom = g.height - g.bottom;
  const hit = svg("rect", { class: "hit", x: g.left, y: g.top, width: plotRight - g.left, height: plotBottom - g.top });
  root.append(hit);
  root.append(svg("rect", { class: "band", x: g.left, y: g.band.y, width: plotRight - g.left, height: g.band.height }));
  root.append(svg("line", { class: "threshold", x1: g.left, x2: plotRight, y1: g.thresholdY, y2: g.thresholdY }));
  root.append(svg("line", { class: "axis", x1: g.left, x2: plotRight, y1: plotBottom, y2: plotBottom }));
  for (const [text, y] of [["100%", g.top + 4], ["0%", plotBottom]]) {
    const label = svg("text", { class: "ylabel", x: g.left - 3, y, "text-anchor": "end" });
    label.textContent = text;
    root.append(label);
  }
  g.ticks.forEach((tick, i) => {
    const anchor = i === 0 ? "start" : i === g.ticks.length - 1 ? "end" : "middle";
    const label = svg("text", { class: "xlabel", x: tick.x, y: g.height - 4, "text-anchor": anchor });
    label.textContent = tick.text;
    root.append(label);
  });
  for (const points of g.lines) root.append(svg("polyline", { class: "line", points }));
  for (const p of g.points) {
    if (p.y === null) {
      root.append(svg("line", { class: "empty", x1: p.x, x2: p.x, y1: plotBottom - 3, y2: plotBottom }));
      continue;
    }
    const dot = svg("circle", { class: "point", cx: p.x, cy: p.y, r: 3.2, tabindex: 0, "data-t": p.t, "data-pct": p.pct ?? "" });
    const title = svg("title", {});
    title.textContent = t("timelinePoint", [formatClock(p.t), String(p.pct), String(p.faces)]);
    dot.append(title);
    dot.addEventListener("click", (event) => {
      event.stopPropagation();
      onSeek(p.t);
    });
    dot.addEventListener("keydown", (event) => {
      if (/** @type {KeyboardEvent} */ (event).key === "Enter" || /** @type {KeyboardEvent} */ (event).key === " ") onSeek(p.t);
    });
    root.append(dot);
  }
  hit.addEventListener("click", (event) => {
    const matrix = root.getScreenCTM();
    if (!matrix) return;
    const point = new DOMPoint(/** @type {MouseEvent} */ (event).clientX, /** @type {MouseEvent} */ (event).clientY)
      .matrixTransform(matrix.inverse());
    onSeek(Math.round(g.timeAt(point.x) * 10) / 10);
  });
  return root;
}

/** @param {number} seconds */
function formatClock(seconds) {
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/**
 * @param {any} view scanView(...) of kind "verdict"
 * @param {{onSeek: (t: number) => void, seenAt?: number | null}} handlers
 */
export function renderVerdict(view, handlers) {
  const box = el("section", { class: `verdict label-${view.label}`, "data-label": view.label });
  box.append(
    el("h2", { class: "verdict-title", text: t(view.title) }),
    el("p", { class: "meaning", text: t(view.meaning) }),
  );
  const numbers = el("dl", { class: "numbers" });
  if (view.pct !== null) numbers.append(el("dt", { text: t("fakeProbability") }), el("dd", { class: "fake-pct", text: `${view.pct} %` }));
  if (view.confidencePct !== null) numbers.append(el("dt", { text: t("confidence") }), el("dd", { class: "confidence", text: `${view.confidencePct} %` }));
  numbers.append(el("dt", { text: t("model") }), el("dd", { class: "model", text: view.model }));
  numbers.append(el("dt", { text: t("analysed") }), el("dd", { class: "analysed", text: t("analysedValue", [String(view.facesAnalyzed), String(view.framesSampled)]) }));
  box.append(numbers);

  if (view.people.length) {
    const list = el("ul", { class: "people" });
    for (const p of view.people) {
      list.append(el("li", { class: `person label-${p.label}`, "data-person": p.name, "data-pct": p.pct ?? "" },
        el("strong", { text: t("person", [p.name]) }),
        ` ${p.pct ?? "–"} % · `,
        el("span", { class: "seen", text: t("seenFromTo", [p.seen, String(p.faces)]) })));
    }
    box.append(el("h3", { text: t("people") }), list);
  }
  if (view.timeline.points.length) {
    const status = el("p", { class: "seek-status", role: "status" });
    box.append(el("h3", { text: t("timeline") }),
      el("p", { class: "hint", text: t("timelineHint", [String(view.thresholdPct)]) }),
      timelineSvg(view.timeline, (s) => handlers.onSeek(s)), status);
  }
  if (view.faces.length) {
    const faces = el("div", { class: "faces" });
    for (const f of view.faces) {
      const img = /** @type {HTMLImageElement} */ (el("img", { src: f.src, alt: t("faceAlt", [f.person, f.time]), width: 64, height: 64 }));
      const figure = el("figure", { class: "face", "data-t": f.t, tabindex: 0 }, img,
        el("figcaption", { text: `${t("person", [f.person])} · ${f.time} · ${f.pct} %` }));
      figure.addEventListener("click", () => handlers.onSeek(f.t));
      faces.append(figure);
    }
    box.append(el("h3", { text: t("faces") }), faces);
  }
  if (view.sourceTitle) box.append(el("p", { class: "source-title", text: t("videoTitle", [view.sourceTitle]) }));
  if (view.reportUrl) {
    box.append(el("p", {}, el("a", { class: "report", href: view.reportUrl, target: "_blank", rel: "noopener noreferrer", text: t("openReport") })));
  }
  return box;
}

/**
 * @param {{stage: string, pct: number | null}} view
 * @param {() => void} onCancel
 */
export function renderProgress(view, onCancel) {
  const bar = el("progress", { class: "bar", max: 100 });
  if (view.pct !== null) /** @type {HTMLProgressElement} */ (bar).value = view.pct;
  const cancel = el("button", { type: "button", class: "cancel secondary", text: t("cancelWait") });
  cancel.addEventListener("click", onCancel);
  return el("section", { class: "progress", "data-stage": view.stage },
    el("p", { class: "stage", text: view.pct === null ? t(view.stage) : `${t(view.stage)} · ${view.pct} %` }),
    bar, el("p", { class: "hint", text: t("cancelHint") }), cancel);
}

/**
 * @param {import("./errors.js").ErrorView} view
 * @param {string | null} [reportUrl]
 */
export function renderError(view, reportUrl) {
  const box = el("section", { class: "error", role: "alert", "data-code": view.code },
    el("h2", { class: "error-title", text: t(view.title, view.subs) }),
    el("p", { class: "error-hint", text: t(view.hint, view.subs) }));
  if (view.detail) box.append(el("p", { class: "error-detail", text: t("gatewaySaid", [view.detail]) }));
  if (reportUrl) box.append(el("p", {}, el("a", { href: reportUrl, target: "_blank", rel: "noopener noreferrer", text: t("openReport") })));
  return box;
}
