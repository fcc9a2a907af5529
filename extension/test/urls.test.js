import assert from "node:assert/strict";
import { test } from "node:test";

import { chooseMenuTarget, chooseTarget, httpUrl, isVideoSite, normalizeUrl } from "../src/urls.js";

test("the usual YouTube forms become the watch page", () => {
  for (const raw of [
    "https://youtu.be/dQw4w9WgXcQ?si=abc123&t=42",
    "https://www.youtube.com/shorts/dQw4w9WgXcQ",
    "https://m.youtube.com/watch?v=dQw4w9WgXcQ&feature=share&list=PL1&index=2",
    "https://www.youtube.com/embed/dQw4w9WgXcQ?autoplay=1",
    "https://www.youtube-nocookie.com/embed/dQw4w9WgXcQ",
    "https://youtube.com/live/dQw4w9WgXcQ?feature=shared",
    "HTTPS://WWW.YOUTUBE.COM/watch?v=dQw4w9WgXcQ#t=10",
  ]) {
    assert.equal(normalizeUrl(raw), "https://www.youtube.com/watch?v=dQw4w9WgXcQ", raw);
  }
});

test("X and Twitter statuses become x.com/<user>/status/<id>", () => {
  assert.equal(normalizeUrl("https://twitter.com/AFPFactCheck/status/1790000000000000000?s=20&t=abc"),
    "https://x.com/AFPFactCheck/status/1790000000000000000");
  assert.equal(normalizeUrl("https://x.com/someone/status/123/video/1"), "https://x.com/someone/status/123");
  assert.equal(normalizeUrl("https://mobile.twitter.com/i/web/status/456"), "https://x.com/i/status/456");
  assert.equal(normalizeUrl("https://x.com/someone"), "https://x.com/someone");
});

test("other players: Vimeo, Dailymotion, TikTok", () => {
  assert.equal(normalizeUrl("https://player.vimeo.com/video/76979871?h=8272103f6e"), "https://vimeo.com/76979871");
  assert.equal(normalizeUrl("https://dai.ly/x8abcd"), "https://www.dailymotion.com/video/x8abcd");
  assert.equal(normalizeUrl("https://www.dailymotion.com/embed/video/x8abcd?autoplay=1"),
    "https://www.dailymotion.com/video/x8abcd");
  assert.equal(normalizeUrl("https://www.tiktok.com/@user/video/7300000000000000000?is_from_webapp=1&sender_device=pc"),
    "https://www.tiktok.com/@user/video/7300000000000000000");
});

test("tracking parameters and fragments go, the rest stays (sorted)", () => {
  assert.equal(normalizeUrl("https://News.Example/clip.mp4?utm_source=tw&b=2&fbclid=XYZ&a=1&gclid=1#frag"),
    "https://news.example/clip.mp4?a=1&b=2");
  assert.equal(normalizeUrl("http://example.org:80/v"), "http://example.org/v");
  assert.equal(normalizeUrl("https://example.org/watch?id=1"), "https://example.org/watch?id=1");
  assert.notEqual(normalizeUrl("https://example.org/watch?id=1"), normalizeUrl("https://example.org/watch?id=2"));
});

test("blob:, data:, browser pages and junk are never URLs to scan", () => {
  for (const raw of ["blob:https://www.youtube.com/4d7c-11", "data:video/mp4;base64,AAAA", "chrome://extensions",
    "about:blank", "file:///tmp/a.mp4", "javascript:alert(1)", "", "not a url", null, undefined,
    "https://user:pass@example.org/v.mp4"]) {
    assert.equal(httpUrl(raw), null, String(raw));
    assert.equal(normalizeUrl(raw), null, String(raw));
  }
});

test("a blob: video sends the page URL", () => {
  const target = chooseTarget({
    pageUrl: "http://127.0.0.1:8080/page/blob/clip.mp4?utm_medium=x",
    videos: [{ src: "blob:http://127.0.0.1:8080/2f1c", area: 300000, top: true, frameUrl: "http://127.0.0.1:8080/page/blob/clip.mp4" }],
  });
  assert.deepEqual(target, { url: "http://127.0.0.1:8080/page/blob/clip.mp4", pageUrl: "http://127.0.0.1:8080/page/blob/clip.mp4", via: "page" });
});

test("a plain <video> with an http(s) source sends that file; the largest video wins", () => {
  const target = chooseTarget({
    pageUrl: "https://news.example/story",
    videos: [
      { src: "https://cdn.example/ad.mp4", area: 100, top: true },
      { src: "https://cdn.example/clip.mp4?utm_source=a", area: 90000, top: true },
    ],
  });
  assert.deepEqual(target, { url: "https://cdn.example/clip.mp4", pageUrl: "https://news.example/story", via: "media" });
});

test("known sites send the page even when their video has a source", () => {
  const target = chooseTarget({
    pageUrl: "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=3",
    videos: [{ src: "https://rr1.googlevideo.com/videoplayback?expire=1", area: 1000, top: true }],
  });
  assert.equal(target?.url, "https://www.youtube.com/watch?v=dQw4w9WgXcQ");
  assert.equal(target?.via, "page");
  assert.equal(isVideoSite("https://news.example/"), false);
});

test("a blob: video in a frame sends the frame; an embedded player of a known site sends its video", () => {
  assert.deepEqual(chooseTarget({
    pageUrl: "https://news.example/story",
    videos: [{ src: "blob:https://player.example/1", area: 5000, top: false, frameUrl: "https://player.example/embed/9" }],
  }), { url: "https://player.example/embed/9", pageUrl: "https://news.example/story", via: "frame" });
  assert.deepEqual(chooseTarget({
    pageUrl: "https://news.example/story",
    videos: [],
    embeds: ["https://ads.example/frame", "https://www.youtube.com/embed/dQw4w9WgXcQ?rel=0"],
  }), { url: "https://www.youtube.com/watch?v=dQw4w9WgXcQ", pageUrl: "https://news.example/story", via: "embed" });
  assert.equal(chooseTarget({ pageUrl: "chrome://newtab/" }), null);
});

test("context menu: the video's http(s) source, else the link, frame or page", () => {
  const page = "https://news.example/story";
  assert.equal(chooseMenuTarget({ mediaType: "video", srcUrl: "https://cdn.example/v.mp4", pageUrl: page })?.url,
    "https://cdn.example/v.mp4");
  assert.deepEqual(chooseMenuTarget({ mediaType: "video", srcUrl: "blob:https://news.example/1", pageUrl: page }),
    { url: page, pageUrl: page, via: "page" });
  assert.equal(chooseMenuTarget({ linkUrl: "https://youtu.be/dQw4w9WgXcQ", pageUrl: page })?.url,
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ");
  assert.equal(chooseMenuTarget({ mediaType: "video", srcUrl: "blob:x", frameUrl: "https://player.example/e/1", pageUrl: page })?.via,
    "frame");
  assert.equal(chooseMenuTarget({ pageUrl: "chrome://settings" }), null);
  assert.equal(chooseMenuTarget({}, "https://news.example/tab")?.url, "https://news.example/tab");
});
