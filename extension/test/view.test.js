import assert from "node:assert/strict";
import { test } from "node:test";

import { BADGES, CHART, MAX_FACES, badgeFor, formatTime, reportLink, scanView, scoreLabel, timelineGeometry } from "../src/view.js";

const JPEG = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwcKDcpLDAxNDQ0Hyc5PTgyPC4zNDL/";

/** A verdict document as scanner/verdict.py writes it (schema-valid). */
function doc(label = "fake", overrides = {}) {
  return {
    source: { url: "https://cdn.example/clip.mp4", title: "<img src=x onerror=alert(1)> a clip", duration_s: 10,
      width: 640, height: 480, fps: 25, sha256: "ab".repeat(32) },
    status: "done",
    verdict: { label, fake_probability: 0.82, confidence: 0.64, threshold: 0.5, uncertain_band: 0.1 },
    model: { name: "meso4_dfdc", version: 3, backend: "embedded" },
    frames_sampled: 4, keyframes_only: false, faces_analyzed: 5, faces_skipped: 0,
    people: [
      { id: 0, fake_probability: 0.3, faces: 2, first_t: 0, last_t: 2.5 },
      { id: 1, fake_probability: 0.82, faces: 3, first_t: 1.2, last_t: 65 },
    ],
    timeline: [
      { t: 0, fake_probability: 0.3, faces: 1 },
      { t: 2.5, fake_probability: 0.9, faces: 2 },
      { t: 5, fake_probability: null, faces: 0 },
      { t: 7.5, fake_probability: 0.7, faces: 1 },
      { t: 10, fake_probability: 0.6, faces: 1 },
    ],
    top_faces: Array.from({ length: 8 }, (_, i) => ({ t: i, person: i % 2, box: [0, 0, 10, 10], fake_probability: i / 10,
      jpeg_base64: JPEG })).concat([{ t: 1, person: 0, box: [0, 0, 1, 1], fake_probability: 0.99, jpeg_base64: "not base64!\"><script>" }]),
    timings_ms: { total: 1234 },
    error: null,
    ...overrides,
  };
}

const scan = (result, status = "done") => ({ id: "abc_123", status, progress: null, model: { name: "meso4_dfdc", version: 3 }, result });

test("a done scan: label words, numbers, people by suspicion, faces, links", () => {
  const view = scanView(scan(doc()), { gatewayUrl: "http://127.0.0.1:8000/" });
  assert.equal(view.kind, "verdict");
  assert.equal(view.title, "label_fake");
  assert.equal(view.meaning, "meaning_fake");
  assert.equal(view.pct, 82);
  assert.equal(view.confidencePct, 64);
  assert.equal(view.model, "meso4_dfdc v3");
  assert.deepEqual(view.people.map((p) => [p.name, p.pct, p.label, p.seen]), [["2", 82, "fake", "0:01–1:05"], ["1", 30, "real", "0:00–0:03"]]);
  assert.equal(view.faces.length, MAX_FACES);
  assert.ok(view.faces.every((f) => f.src.startsWith("data:image/jpeg;base64,") && !f.src.includes("<")));
  assert.deepEqual(view.faces.map((f) => f.pct), [70, 60, 50, 40, 30, 20]);
  assert.equal(view.reportUrl, "http://127.0.0.1:8000/scans/abc_123");
  assert.equal(view.sourceTitle, "<img src=x onerror=alert(1)> a clip");  // text, drawn with textContent
});

test("every label has its words; a failed scan shows its error and no verdict", () => {
  for (const label of ["fake", "real", "uncertain", "no_face"]) {
    assert.equal(scanView(scan(doc(label))).title, `label_${label}`);
  }
  const failed = doc("fake", { status: "failed", verdict: null, error: { code: "not_a_video", message: "no video stream", retryable: false } });
  const view = scanView(scan(failed, "failed"), { gatewayUrl: "http://g.example" });
  assert.equal(view.kind, "error");
  assert.equal(view.error.title, "err_code_not_a_video");
  assert.equal(view.pct, undefined);
  assert.equal(view.people, undefined);
  assert.equal(badgeFor(scan(failed, "failed")), "failed");
  // a document that says done but carries no valid verdict is not shown as one
  assert.equal(scanView(scan(doc("fake", { verdict: { label: "maybe" } }))).kind, "error");
});

test("progress: queued, each worker stage, the fraction", () => {
  assert.deepEqual(scanView({ id: "a", status: "queued", progress: null }), { kind: "progress", stage: "stage_queued", pct: null });
  assert.deepEqual(scanView({ id: "a", status: "running", progress: { stage: "fetch", fraction: 0.256 } }), { kind: "progress", stage: "stage_fetch", pct: 26 });
  assert.equal(scanView({ id: "a", status: "running", progress: { stage: "analyze", fraction: 0.5 } }).stage, "stage_analyze");
  assert.equal(scanView({ id: "a", status: "running", progress: { stage: "classify", fraction: 1 } }).stage, "stage_classify");
  assert.equal(scanView({ id: "a", status: "running", progress: null }).stage, "stage_running");
  assert.equal(badgeFor({ id: "a", status: "running" }), "running");
});

test("the timeline chart: points in the plot, gaps without faces, threshold and band", () => {
  const g = timelineGeometry(doc().timeline, 10, 0.5, 0.1);
  assert.equal(g.points.length, 5);
  assert.equal(g.points[0].x, CHART.left);
  assert.equal(g.points[4].x, CHART.width - CHART.right);
  assert.equal(g.points[2].y, null);
  assert.equal(g.lines.length, 2);  // broken at the frame without a face
  const plotH = CHART.height - CHART.top - CHART.bottom;
  assert.equal(g.thresholdY, CHART.top + plotH / 2);
  assert.ok(g.band.y < g.thresholdY && g.band.y + g.band.height > g.thresholdY);
  assert.ok(Math.abs(g.band.height - plotH * 0.2) < 0.02);
  assert.equal(g.points[1].y, Math.round((CHART.top + 0.1 * plotH) * 100) / 100);
  assert.equal(g.timeAt(CHART.left), 0);
  assert.equal(g.timeAt(CHART.width - CHART.right), 10);
  assert.equal(g.timeAt(-50), 0);
  assert.deepEqual(g.ticks.map((tick) => tick.text), ["0:00", "0:05", "0:10"]);
  assert.equal(timelineGeometry([], null, 0.5, 0.1).points.length, 0);
});

test("scores against the threshold, times, badges", () => {
  assert.equal(scoreLabel(0.55, 0.5, 0.1), "uncertain");
  assert.equal(scoreLabel(0.61, 0.5, 0.1), "fake");
  assert.equal(scoreLabel(0.2, 0.5, 0.1), "real");
  assert.equal(formatTime(3725), "1:02:05");
  assert.equal(formatTime(59.6), "1:00");
  assert.deepEqual(Object.keys(BADGES).sort(), ["failed", "fake", "no_face", "real", "running", "uncertain"]);
  assert.equal(badgeFor(scan(doc("no_face"))), "no_face");
});

test("the report link: the gateway's own (with its page token) when it is on the gateway, else built", () => {
  const gw = "http://127.0.0.1:8000";
  assert.equal(reportLink({ id: "abc", report_url: "http://127.0.0.1:8000/scans/abc?s=tok" }, gw), "http://127.0.0.1:8000/scans/abc?s=tok");
  assert.equal(reportLink({ id: "abc", report_url: "https://evil.example/scans/abc" }, gw), "http://127.0.0.1:8000/scans/abc");
  assert.equal(reportLink({ id: "abc", report_url: "http://127.0.0.1:8000/scans/other" }, gw), "http://127.0.0.1:8000/scans/abc");
  assert.equal(reportLink({ id: "abc" }, "https://gw.example/mesoscan/"), "https://gw.example/mesoscan/scans/abc");
  assert.equal(reportLink({ id: "abc" }, ""), null);
});

test("links are http(s) only", () => {
  const view = scanView(scan(doc("real", { source: { ...doc().source, url: "javascript:alert(1)" } })), { gatewayUrl: "javascript:alert(1)" });
  assert.equal(view.sourceUrl, null);
  assert.equal(view.reportUrl, null);
});
