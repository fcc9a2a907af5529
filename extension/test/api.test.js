import assert from "node:assert/strict";
import { test } from "node:test";

import { GatewayError, gatewayBase, getScan, listModels, submitScan } from "../src/api.js";

/** A fetch that records its calls and answers with `respond(url, init)`. */
function fakeFetch(respond) {
  const calls = [];
  const impl = async (url, init) => {
    calls.push({ url, init });
    return respond(url, init);
  };
  return { calls, impl };
}

const json = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
const SCAN = { id: "s1", status: "queued", progress: null };

test("a scan is POSTed with the key in X-API-Key, no cookies, no redirects followed", async () => {
  const f = fakeFetch(() => json(202, SCAN));
  const scan = await submitScan({ gatewayUrl: "http://127.0.0.1:8000/", apiKey: "k-123", model: "meso4_df" },
    { url: "https://cdn.example/v.mp4", pageUrl: "https://news.example/story" }, { fetchImpl: f.impl });
  assert.equal(scan.id, "s1");
  const [{ url, init }] = f.calls;
  assert.equal(url, "http://127.0.0.1:8000/api/v1/scans");
  assert.equal(init.method, "POST");
  assert.equal(init.credentials, "omit");
  assert.equal(init.redirect, "manual");
  assert.equal(init.headers["X-API-Key"], "k-123");
  assert.deepEqual(JSON.parse(init.body), { url: "https://cdn.example/v.mp4", page_url: "https://news.example/story", model: "meso4_df" });
  assert.ok(!url.includes("k-123"));
});

test("no key, no header; the gateway's default model is not named", async () => {
  const f = fakeFetch(() => json(202, SCAN));
  await submitScan({ gatewayUrl: "http://127.0.0.1:8000", apiKey: "", model: "" }, { url: "https://a.example/v" }, { fetchImpl: f.impl });
  assert.equal("X-API-Key" in f.calls[0].init.headers, false);
  assert.deepEqual(JSON.parse(f.calls[0].init.body), { url: "https://a.example/v" });
});

test("errors become problems: 401, 429 with Retry-After, unreachable, redirect, nonsense", async () => {
  const settings = { gatewayUrl: "http://127.0.0.1:8000", apiKey: "bad" };
  const problem = async (respond) => {
    try {
      await getScan(settings, "s1", { fetchImpl: fakeFetch(respond).impl });
    } catch (exc) {
      assert.ok(exc instanceof GatewayError);
      return exc.problem;
    }
    assert.fail("no error");
  };
  assert.deepEqual(await problem(() => json(401, { error: { code: "unauthorized", message: "unknown or revoked API key" } })),
    { kind: "http", status: 401, code: "unauthorized", message: "unknown or revoked API key", retryAfter: undefined });
  assert.equal((await problem(() => json(429, { error: { code: "rate_limited", message: "x" } }, { "Retry-After": "17" }))).retryAfter, 17);
  assert.equal((await problem(() => { throw new TypeError("Failed to fetch"); })).kind, "unreachable");
  assert.equal((await problem(() => new Response(null, { status: 302, headers: { Location: "https://elsewhere.example/" } }))).kind, "redirect");
  assert.equal((await problem(() => new Response("<html>", { status: 200 }))).kind, "bad_response");
  assert.equal((await problem(() => json(200, { id: "../../x", status: "done" }))).kind, "bad_response");
  assert.equal((await problem(() => json(500, {}))).status, 500);
});

test("status is read from the configured gateway by id, never from a URL in the answer", async () => {
  const f = fakeFetch(() => json(200, { ...SCAN, status_url: "https://attacker.example/steal" }));
  await getScan({ gatewayUrl: "https://gw.example/mesoscan/" }, "s1", { fetchImpl: f.impl });
  assert.equal(f.calls[0].url, "https://gw.example/mesoscan/api/v1/scans/s1");
  await assert.rejects(getScan({ gatewayUrl: "https://gw.example" }, "a/b", { fetchImpl: f.impl }), GatewayError);
});

test("no gateway set is a config problem; only http(s) gateways", async () => {
  await assert.rejects(listModels({ gatewayUrl: "" }), (exc) => exc.problem.kind === "config");
  assert.equal(gatewayBase("ftp://x"), null);
  assert.equal(gatewayBase(" http://127.0.0.1:8000/ "), "http://127.0.0.1:8000");
});
