// Rules every shipped file keeps: each string in both locales, no markup from strings, no remote code or assets.
import assert from "node:assert/strict";
import { readFile, readdir } from "node:fs/promises";
import { test } from "node:test";

import { SCAN_CODES } from "../src/errors.js";
import { BADGES, LABELS } from "../src/view.js";

const root = new URL("../", import.meta.url);
const read = (path) => readFile(new URL(path, root), "utf8");
const sources = async () => {
  const names = (await readdir(new URL("src/", root))).filter((n) => n.endsWith(".js"));
  return Object.fromEntries(await Promise.all(names.map(async (n) => [n, await read(`src/${n}`)])));
};
const pages = ["popup.html", "sidepanel.html", "options.html"];

test("every message used exists in English and French, with the same substitutions", async () => {
  const en = JSON.parse(await read("_locales/en/messages.json"));
  const fr = JSON.parse(await read("_locales/fr/messages.json"));
  assert.deepEqual(Object.keys(fr).sort(), Object.keys(en).sort());
  const used = new Set();
  for (const text of Object.values(await sources())) {
    for (const m of text.matchAll(/\bt\(\s*"([A-Za-z0-9_]+)"/g)) used.add(m[1]);
  }
  for (const page of pages) for (const m of (await read(page)).matchAll(/data-i18n(?:-[a-z-]+)?="([^"]+)"/g)) used.add(m[1]);
  for (const m of (await read("manifest.json")).matchAll(/__MSG_([A-Za-z0-9_]+)__/g)) used.add(m[1]);
  const errorCodes = ["not_configured", "unreachable", "redirect", "bad_response", "stalled", "no_url", "no_video_page",
    "unknown_model", "bad_request", "unauthorized", "forbidden", "not_found", "request_too_large", "rate_limited",
    "unavailable", "server", ...SCAN_CODES.map((c) => `code_${c}`), "code_unknown"];
  for (const code of errorCodes) used.add(`err_${code}`).add(`hint_${code}`);
  for (const label of LABELS) used.add(`label_${label}`).add(`meaning_${label}`);
  for (const [kind, badge] of Object.entries(BADGES)) used.add(badge.text).add(`badgeTitle_${kind}`);
  for (const via of ["page", "media", "frame", "embed", "link"]) used.add(`via_${via}`);
  for (const stage of ["submitting", "queued", "running", "fetch", "analyze", "classify"]) used.add(`stage_${stage}`);
  const subs = (s) => [...s.matchAll(/\$(\d)/g)].map((m) => m[1]).sort().join();
  for (const name of used) {
    assert.ok(en[name]?.message, `missing English message ${name}`);
    assert.ok(fr[name]?.message, `missing French message ${name}`);
    assert.equal(subs(fr[name].message), subs(en[name].message), `substitutions differ in ${name}`);
  }
  for (const badge of Object.values(BADGES)) assert.ok(en[badge.text].message.length <= 4 && fr[badge.text].message.length <= 4);
});

test("no markup from strings, no eval, nothing remote", async () => {
  for (const [name, text] of Object.entries(await sources())) {
    assert.doesNotMatch(text, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setTimeout\(\s*["'`]/, name);
    assert.doesNotMatch(text, /\bimport\(\s*["'`]https?:|\bimportScripts\(/, name);
    const urls = [...text.matchAll(/https?:\/\/[^\s"'`)]+/g)].map((m) => m[0])
      .filter((u) => !u.startsWith("http://127.0.0.1") && u !== "http://www.w3.org/2000/svg"
        && !/^https:\/\/(www\.youtube\.com|x\.com|vimeo\.com|www\.dailymotion\.com|www\.)/.test(u));
    assert.deepEqual(urls, [], `remote URLs in ${name}`);
  }
  for (const page of pages) {
    const html = await read(page);
    assert.doesNotMatch(html, /<script(?![^>]*src="src\/)/, `${page}: inline or remote script`);
    assert.doesNotMatch(html, /\s(?:src|href)="https?:/, `${page}: remote asset`);
    assert.doesNotMatch(html, /\son[a-z]+=/, `${page}: inline handler`);
  }
});

test("the manifest asks for no host permission and a strict CSP", async () => {
  const manifest = JSON.parse(await read("manifest.json"));
  assert.equal(manifest.manifest_version, 3);
  assert.equal(manifest.host_permissions, undefined);
  assert.equal(manifest.content_scripts, undefined);
  assert.deepEqual([...manifest.permissions].sort(), ["activeTab", "alarms", "contextMenus", "scripting", "sidePanel", "storage"]);
  assert.ok(!JSON.stringify(manifest).includes("<all_urls>"));
  const csp = manifest.content_security_policy.extension_pages;
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /default-src 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
});
