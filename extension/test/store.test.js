import assert from "node:assert/strict";
import { test } from "node:test";

import { CACHE_MAX_AGE_MS, CACHE_MAX_ENTRIES, DEFAULT_SETTINGS, cacheKey, isFresh, keysToPrune } from "../src/store.js";

test("verdicts are kept by model and normalised URL", () => {
  assert.equal(cacheKey("", "https://a.example/v"), "verdict:default|https://a.example/v");
  assert.notEqual(cacheKey("meso4_df", "https://a.example/v"), cacheKey("meso4_f2f", "https://a.example/v"));
});

test("an age limit, and no entry from the future", () => {
  const now = 1_000_000_000_000;
  assert.equal(isFresh({ savedAt: now - 1000 }, now), true);
  assert.equal(isFresh({ savedAt: now - CACHE_MAX_AGE_MS }, now), false);
  assert.equal(isFresh({ savedAt: now + 60_000 }, now), false);
  assert.equal(isFresh(undefined, now), false);
});

test("pruning drops stale verdicts, then the oldest past the limit, and nothing else", () => {
  const now = 2_000_000_000_000;
  const items = { settings: { apiKey: "k" }, "verdict:default|old": { savedAt: now - CACHE_MAX_AGE_MS - 1 } };
  for (let i = 0; i < CACHE_MAX_ENTRIES + 3; i++) items[`verdict:default|u${i}`] = { savedAt: now - i };
  const gone = keysToPrune(items, now);
  assert.ok(gone.includes("verdict:default|old"));
  assert.deepEqual(gone.filter((k) => k !== "verdict:default|old").sort(),
    [`verdict:default|u${CACHE_MAX_ENTRIES}`, `verdict:default|u${CACHE_MAX_ENTRIES + 1}`, `verdict:default|u${CACHE_MAX_ENTRIES + 2}`].sort());
  assert.ok(!gone.includes("settings"));
});

test("defaults: the dev gateway, no key, the gateway's model, the label on", () => {
  assert.deepEqual(DEFAULT_SETTINGS, { gatewayUrl: "http://127.0.0.1:8000", apiKey: "", model: "", overlay: true });
});
