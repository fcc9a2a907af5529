import assert from "node:assert/strict";
import { test } from "node:test";

import { SCAN_CODES, describeError, retryAfterSeconds } from "../src/errors.js";

test("every scan error code of the verdict schema has its own words", async () => {
  const { readFile } = await import("node:fs/promises");
  const schema = JSON.parse(await readFile(new URL("../../scanner/verdict.schema.json", import.meta.url), "utf8"));
  assert.deepEqual([...SCAN_CODES].sort(), [...schema.properties.error.properties.code.enum].sort());
  for (const code of SCAN_CODES) {
    const view = describeError({ kind: "scan", code, message: "detail" });
    assert.equal(view.title, `err_code_${code}`);
    assert.equal(view.hint, `hint_code_${code}`);
    assert.equal(view.detail, "detail");
  }
  assert.equal(describeError({ kind: "scan", code: "something_new" }).title, "err_code_unknown");
  assert.equal(describeError({ kind: "scan", code: "unsupported_url" }).title, "err_code_unsupported_url");
});

test("HTTP answers: 401, 413, 429 with its wait, 503, others", () => {
  assert.equal(describeError({ kind: "http", status: 401, code: "unauthorized" }).code, "unauthorized");
  assert.equal(describeError({ kind: "http", status: 413 }).code, "request_too_large");
  const limited = describeError({ kind: "http", status: 429, retryAfter: 42 });
  assert.equal(limited.code, "rate_limited");
  assert.deepEqual(limited.subs, ["42"]);
  assert.deepEqual(describeError({ kind: "http", status: 429 }).subs, ["60"]);
  assert.deepEqual(describeError({ kind: "http", status: 503, retryAfter: 10 }).subs, ["10"]);
  assert.equal(describeError({ kind: "http", status: 400, code: "blocked_address" }).code, "code_blocked_address");
  assert.equal(describeError({ kind: "http", status: 400, code: "unknown_model" }).code, "unknown_model");
  assert.equal(describeError({ kind: "http", status: 400, code: "invalid_request" }).code, "bad_request");
  assert.deepEqual(describeError({ kind: "http", status: 502 }).subs, ["502"]);
});

test("no gateway, no answer, a scan that never ends", () => {
  assert.equal(describeError({ kind: "config" }).code, "not_configured");
  assert.deepEqual(describeError({ kind: "unreachable" }, "http://127.0.0.1:9").subs, ["http://127.0.0.1:9"]);
  assert.equal(describeError({ kind: "stalled" }).code, "stalled");
  assert.equal(describeError({ kind: "no_url" }).code, "no_url");
  assert.equal(describeError({ kind: "redirect" }).code, "redirect");
  assert.equal(describeError({ kind: "no_video_page" }).code, "no_video_page");
});

test("Retry-After in seconds or as a date", () => {
  assert.equal(retryAfterSeconds("30"), 30);
  assert.equal(retryAfterSeconds(null), undefined);
  assert.equal(retryAfterSeconds("soon"), undefined);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(retryAfterSeconds("Thu, 01 Jan 2026 00:01:00 GMT", now), 60);
});

test("the gateway's own message is kept short, as detail", () => {
  assert.equal(describeError({ kind: "http", status: 400, message: "x".repeat(1000) }).detail?.length, 300);
});
