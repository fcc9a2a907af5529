// The options page: gateway URL, API key, model (listed by the gateway), on-page label. Save asks for access to the
// gateway's origin (optional host permission, requested inside the click), so the extension installs with none.

import { GatewayError, gatewayBase, health, listModels } from "./api.js";
import { describeError } from "./errors.js";
import { localize, t } from "./i18n.js";
import { getSettings, saveSettings } from "./store.js";

const form = /** @type {HTMLFormElement} */ (document.getElementById("form"));
const gatewayInput = /** @type {HTMLInputElement} */ (document.getElementById("gatewayUrl"));
const keyInput = /** @type {HTMLInputElement} */ (document.getElementById("apiKey"));
const modelSelect = /** @type {HTMLSelectElement} */ (document.getElementById("model"));
const overlayInput = /** @type {HTMLInputElement} */ (document.getElementById("overlay"));
const status = /** @type {HTMLElement} */ (document.getElementById("status"));
const permission = /** @type {HTMLElement} */ (document.getElementById("permission"));

/** The form's values, as settings (not saved yet). */
function formSettings() {
  return {
    gatewayUrl: gatewayInput.value.trim(),
    apiKey: keyInput.value.trim(),
    model: modelSelect.value,
    overlay: overlayInput.checked,
  };
}

/**
 * @param {string} text
 * @param {"ok" | "bad" | ""} kind
 */
function say(text, kind) {
  status.textContent = text;
  status.className = kind;
}

/**
 * The model list: the gateway's default first, then every registered model.
 * @param {Array<{name: string, architecture: string, version: number, default: boolean}>} models
 * @param {string} selected
 * @param {string} [defaultName]
 */
function fillModels(models, selected, defaultName) {
  const options = [new Option(defaultName ? t("modelDefaultNamed", [defaultName]) : t("modelDefault"), "")];
  for (const m of models) options.push(new Option(`${m.name} (${m.architecture}, v${m.version})`, m.name));
  if (selected && !models.some((m) => m.name === selected)) options.push(new Option(selected, selected));
  modelSelect.replaceChildren(...options);
  modelSelect.value = selected;
}

async function load() {
  localize(document);
  const settings = await getSettings();
  gatewayInput.value = settings.gatewayUrl;
  keyInput.value = settings.apiKey ?? "";
  overlayInput.checked = settings.overlay !== false;
  fillModels([], settings.model ?? "");
  try {
    const list = await listModels(settings);
    fillModels(list.models, settings.model ?? "", list.default);
  } catch {
    // offline or not configured yet: "Test connection" says why
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const values = formSettings();
  const base = gatewayBase(values.gatewayUrl);
  if (base === null) {
    say(t("invalidGatewayUrl"), "bad");
    return;
  }
  // Asked before anything is awaited: the request must stay inside the click's user gesture.
  const origin = `${new URL(base).origin}/*`;
  const asked = chrome.permissions.request({ origins: [origin] });
  void saveSettings({ ...values, gatewayUrl: base }).then(() => {
    gatewayInput.value = base;
    say(t("saved"), "ok");
  });
  asked.then(
    (granted) => {
      permission.textContent = t(granted ? "permissionGranted" : "permissionDenied", [origin]);
    },
    () => {
      permission.textContent = t("permissionDenied", [origin]);
    },
  );
});

document.getElementById("test")?.addEventListener("click", async () => {
  const values = formSettings();
  say(t("testing"), "");
  try {
    await health(values);
    const list = await listModels(values);
    fillModels(list.models, values.model, list.default);
    say(t("testOk", [String(list.models.length), list.default]), "ok");
  } catch (exc) {
    const problem = exc instanceof GatewayError ? exc.problem : { kind: /** @type {const} */ ("bad_response") };
    const view = describeError(problem, gatewayBase(values.gatewayUrl) ?? values.gatewayUrl);
    say(`${t(view.title, view.subs)} ${t(view.hint, view.subs)}`, "bad");
  }
});

void load();
