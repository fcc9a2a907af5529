// Which URL to scan: normalising the usual forms of video URLs and choosing between the page, a frame and a
// <video>'s own source. Pure functions (no browser API), tested with node's test runner.

/** Query parameters that only track where a click came from; they never change which video a URL shows. */
const TRACKING_PARAMS = new Set([
  "fbclid", "gclid", "dclid", "gbraid", "wbraid", "msclkid", "yclid", "twclid", "ttclid", "igshid", "igsh",
  "mc_cid", "mc_eid", "_ga", "_gl", "si", "feature", "ref_src", "ref_url", "spm", "share_source", "xtor",
]);
const TRACKING_PREFIXES = ["utm_", "pk_", "mtm_"];

/** Hosts whose pages yt-dlp resolves better than any media URL found in them (signed, short-lived streams). */
const SITE_HOSTS = [
  "youtube.com", "youtu.be", "youtube-nocookie.com", "x.com", "twitter.com", "vimeo.com", "dailymotion.com",
  "dai.ly", "tiktok.com", "instagram.com", "facebook.com", "fb.watch", "twitch.tv", "rumble.com", "bsky.app",
];

const YOUTUBE_ID = /^[A-Za-z0-9_-]{6,}$/;

/**
 * @param {string} host
 * @param {string} domain
 */
function isOrUnder(host, domain) {
  return host === domain || host.endsWith(`.${domain}`);
}

/**
 * Parses an http(s) URL, or returns null for anything else (blob:, data:, chrome:, relative, garbage).
 * @param {string | null | undefined} raw
 * @returns {URL | null}
 */
export function httpUrl(raw) {
  if (typeof raw !== "string" || raw.length === 0 || raw.length > 4096) return null;
  let url;
  try {
    url = new URL(raw.trim());
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  if (!url.hostname || url.username || url.password) return null;
  return url;
}

/**
 * @param {URL} url
 */
function dropTracking(url) {
  for (const key of [...url.searchParams.keys()]) {
    const lower = key.toLowerCase();
    if (TRACKING_PARAMS.has(lower) || TRACKING_PREFIXES.some((p) => lower.startsWith(p))) {
      url.searchParams.delete(key);
    }
  }
}

/** @param {string} id */
const youtube = (id) => `https://www.youtube.com/watch?v=${id}`;

/**
 * The canonical form of a video URL: the usual short, embed and mobile forms of the big sites made into their
 * watch-page URL, tracking parameters and fragments dropped, the host lower-cased. Null when not http(s).
 * @param {string | null | undefined} raw
 * @returns {string | null}
 */
export function normalizeUrl(raw) {
  const url = httpUrl(raw);
  if (url === null) return null;
  const host = url.hostname.toLowerCase().replace(/^(www|m|mobile)\./, "");
  const parts = url.pathname.split("/").filter(Boolean);

  if (host === "youtu.be" && parts[0] && YOUTUBE_ID.test(parts[0])) return youtube(parts[0]);
  if (isOrUnder(host, "youtube.com") || isOrUnder(host, "youtube-nocookie.com")) {
    const v = url.searchParams.get("v");
    if (parts[0] === "watch" && v && YOUTUBE_ID.test(v)) return youtube(v);
    if (["shorts", "embed", "live", "v", "e"].includes(parts[0]) && parts[1] && YOUTUBE_ID.test(parts[1])) {
      return youtube(parts[1]);
    }
  }
  if (host === "x.com" || host === "twitter.com") {
    const at = parts.indexOf("status") >= 0 ? parts.indexOf("status") : parts.indexOf("statuses");
    const id = at >= 0 ? parts[at + 1] : undefined;
    if (id && /^\d+$/.test(id)) {
      const user = at === 1 && parts[0] !== "i" ? parts[0] : "i";
      return `https://x.com/${user}/status/${id}`;
    }
  }
  if (host === "vimeo.com" || host === "player.vimeo.com") {
    const id = parts.find((p) => /^\d+$/.test(p));
    if (id) return `https://vimeo.com/${id}`;
  }
  if (host === "dai.ly" && parts[0]) return `https://www.dailymotion.com/video/${parts[0]}`;
  if (host === "dailymotion.com" || host === "geo.dailymotion.com") {
    const at = parts.indexOf("video");
    const id = at >= 0 ? parts[at + 1] : url.searchParams.get("video");
    if (id && /^[A-Za-z0-9]+$/.test(id)) return `https://www.dailymotion.com/video/${id}`;
  }
  if (isOrUnder(host, "tiktok.com") || isOrUnder(host, "instagram.com")) {
    return `https://www.${host}${url.pathname.replace(/\/+$/, "")}`;
  }

  url.hash = "";
  url.hostname = url.hostname.toLowerCase();
  dropTracking(url);
  url.searchParams.sort();
  return url.toString();
}

/**
 * True for the pages of sites whose page URL is the right thing to scan.
 * @param {string | null | undefined} raw
 */
export function isVideoSite(raw) {
  const url = httpUrl(raw);
  if (url === null) return false;
  const host = url.hostname.toLowerCase();
  return SITE_HOSTS.some((domain) => isOrUnder(host, domain));
}

/**
 * @typedef {object} VideoInfo
 * @property {string} [src] the element's `currentSrc` (or `src`)
 * @property {number} [area] its visible area in CSS pixels
 * @property {string} [frameUrl] the URL of the frame it is in (the page's own URL for the top frame)
 * @property {boolean} [top] whether it is in the top frame
 */

/**
 * @typedef {object} PageInfo
 * @property {string} pageUrl the tab's URL
 * @property {VideoInfo[]} [videos] the <video> elements found (in every frame that could be read)
 * @property {string[]} [embeds] the src of the page's <iframe>s (players of other sites)
 */

/**
 * @typedef {object} ScanTarget
 * @property {string} url what is sent as `url`
 * @property {string} pageUrl what is sent as `page_url`
 * @property {"page" | "media" | "frame" | "embed" | "link"} via where `url` came from
 */

/**
 * The URL to scan for a page: a known video site's page URL; else the main <video>'s own http(s) source; else
 * the frame the video plays in; else an embedded player of a known site; else the page itself. A blob: or data:
 * source (the usual case on big sites: their players feed the element through Media Source Extensions) is never
 * sent. Null when the page itself is not http(s).
 * @param {PageInfo} info
 * @returns {ScanTarget | null}
 */
export function chooseTarget(info) {
  const pageUrl = normalizeUrl(info.pageUrl);
  if (pageUrl === null) return null;
  if (isVideoSite(pageUrl)) return { url: pageUrl, pageUrl, via: "page" };
  const videos = [...(info.videos ?? [])].sort((a, b) => (b.area ?? 0) - (a.area ?? 0));
  const main = videos[0];
  if (main) {
    const media = httpUrl(main.src) ? normalizeUrl(main.src) : null;
    if (media !== null) return { url: media, pageUrl, via: "media" };
    const frame = main.top === false ? normalizeUrl(main.frameUrl) : null;
    if (frame !== null && frame !== pageUrl) return { url: frame, pageUrl, via: "frame" };
    return { url: pageUrl, pageUrl, via: "page" };
  }
  for (const embed of info.embeds ?? []) {
    if (isVideoSite(embed)) {
      const url = normalizeUrl(embed);
      if (url !== null) return { url, pageUrl, via: "embed" };
    }
  }
  return { url: pageUrl, pageUrl, via: "page" };
}

/**
 * @typedef {object} MenuInfo
 * @property {string} [mediaType] "video", "image", "audio" or undefined
 * @property {string} [srcUrl]
 * @property {string} [linkUrl]
 * @property {string} [frameUrl]
 * @property {string} [pageUrl]
 */

/**
 * The URL to scan for a context-menu click: the video's own source when it is http(s), else the frame, link or
 * page URL. Null when none of them is http(s).
 * @param {MenuInfo} info
 * @param {string} [tabUrl]
 * @returns {ScanTarget | null}
 */
export function chooseMenuTarget(info, tabUrl) {
  const pageUrl = normalizeUrl(info.pageUrl) ?? normalizeUrl(tabUrl) ?? normalizeUrl(info.frameUrl);
  if (info.mediaType === "video" && httpUrl(info.srcUrl) && !(pageUrl && isVideoSite(pageUrl))) {
    return { url: /** @type {string} */ (normalizeUrl(info.srcUrl)), pageUrl: pageUrl ?? "", via: "media" };
  }
  const link = normalizeUrl(info.linkUrl);
  if (link !== null) return { url: link, pageUrl: pageUrl ?? link, via: "link" };
  const frame = normalizeUrl(info.frameUrl);
  if (frame !== null && frame !== pageUrl) return { url: frame, pageUrl: pageUrl ?? frame, via: "frame" };
  if (pageUrl !== null) return { url: pageUrl, pageUrl, via: "page" };
  return null;
}
