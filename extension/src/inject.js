// Functions run in the page through chrome.scripting.executeScript({func}). Each is serialised on its own, so
// each is self-contained: no imports, no outer names. They build DOM nodes with textContent only (nothing from the
// gateway or the page becomes markup) and load nothing remote.

/**
 * The <video> elements of this frame and the players of other sites embedded in it.
 * @returns {{frameUrl: string, top: boolean, videos: Array<{src: string, area: number, top: boolean,
 *   frameUrl: string}>, embeds: string[]}}
 */
export function pageVideos() {
  const top = window === window.top;
  const videos = [...document.querySelectorAll("video")].map((video) => {
    const rect = video.getBoundingClientRect();
    const source = video.querySelector("source[src]");
    return {
      src: video.currentSrc || video.src || (source ? /** @type {HTMLSourceElement} */ (source).src : ""),
      area: Math.max(0, rect.width) * Math.max(0, rect.height),
      top,
      frameUrl: location.href,
    };
  });
  const embeds = [...document.querySelectorAll("iframe[src]")].map((f) => /** @type {HTMLIFrameElement} */ (f).src);
  return { frameUrl: location.href, top, videos, embeds };
}

/**
 * Moves this frame's main video (the one playing `src`, else the largest) to `t` seconds.
 * @param {number} t
 * @param {string} [src]
 * @returns {{ok: boolean, currentTime?: number, reason?: string}}
 */
export function seekVideo(t, src) {
  const videos = [...document.querySelectorAll("video")];
  if (videos.length === 0) return { ok: false, reason: "no_video" };
  const area = (/** @type {HTMLVideoElement} */ v) => {
    const r = v.getBoundingClientRect();
    return r.width * r.height;
  };
  const video = videos.find((v) => src && (v.currentSrc === src || v.src === src))
    ?? videos.sort((a, b) => area(b) - area(a))[0];
  const end = Number.isFinite(video.duration) ? video.duration : Infinity;
  video.currentTime = Math.max(0, Math.min(Number(t) || 0, end));
  return { ok: true, currentTime: video.currentTime };
}

/**
 * Shows (or replaces) the verdict label next to this frame's main video: above its top edge when there is room,
 * else just inside its top-left corner (players keep their controls at the bottom). Dismissible.
 * @param {{text: string, detail: string, color: string, link: string | null, linkText: string, close: string,
 *   src?: string}} label
 * @returns {boolean} whether a video was found
 */
export function showLabel(label) {
  const HOST_ID = "mesoscan-verdict-label";
  document.getElementById(HOST_ID)?.remove();
  const videos = [...document.querySelectorAll("video")];
  if (videos.length === 0) return false;
  const area = (/** @type {HTMLVideoElement} */ v) => {
    const r = v.getBoundingClientRect();
    return r.width * r.height;
  };
  const video = videos.find((v) => label.src && (v.currentSrc === label.src || v.src === label.src))
    ?? videos.sort((a, b) => area(b) - area(a))[0];

  const host = document.createElement("div");
  host.id = HOST_ID;
  host.style.cssText = "position:absolute;z-index:2147483646;margin:0;padding:0;border:0;";
  const root = host.attachShadow({ mode: "open" });
  const style = document.createElement("style");
  style.textContent = `
    .box { font: 13px/1.3 system-ui, sans-serif; color: #fff; background: ${label.color};
      border-radius: 4px; padding: 3px 6px; display: inline-flex; gap: 8px; align-items: center;
      box-shadow: 0 1px 3px rgba(0,0,0,.4); max-width: 480px; white-space: nowrap; }
    .detail { opacity: .9; }
    a { color: #fff; text-decoration: underline; }
    button { all: unset; cursor: pointer; font-weight: bold; padding: 0 3px; }
    button:focus-visible, a:focus-visible { outline: 2px solid #fff; }`;
  const box = document.createElement("div");
  box.className = "box";
  box.setAttribute("role", "status");
  const text = document.createElement("strong");
  text.className = "text";
  text.textContent = label.text;
  const detail = document.createElement("span");
  detail.className = "detail";
  detail.textContent = label.detail;
  box.append(text, detail);
  if (label.link && /^https?:\/\//i.test(label.link)) {
    const a = document.createElement("a");
    a.href = label.link;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.textContent = label.linkText;
    box.append(a);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "close";
  close.textContent = "×";
  close.title = label.close;
  close.setAttribute("aria-label", label.close);
  box.append(close);
  root.append(style, box);
  document.body.append(host);

  const place = () => {
    if (!host.isConnected) return;
    const r = video.getBoundingClientRect();
    const height = host.offsetHeight || 24;
    const above = r.top + window.scrollY - height - 4;
    host.style.left = `${Math.max(0, r.left + window.scrollX)}px`;
    host.style.top = `${above >= 0 ? above : r.top + window.scrollY + 6}px`;
  };
  place();
  const observer = new ResizeObserver(place);
  observer.observe(video);
  window.addEventListener("resize", place);
  close.addEventListener("click", () => {
    observer.disconnect();
    window.removeEventListener("resize", place);
    host.remove();
  });
  return true;
}
