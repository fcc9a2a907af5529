// Every string the user reads comes from _locales through chrome.i18n (English and French).

/**
 * The message `name` with its substitutions; the name itself when it is missing (a test keeps that from happening).
 * @param {string} name
 * @param {string[]} [subs]
 */
export function t(name, subs) {
  return chrome.i18n.getMessage(name, subs) || name;
}

/**
 * Fills every element with `data-i18n` (text) and `data-i18n-title`, `data-i18n-placeholder`,
 * `data-i18n-aria-label` (attributes) under `root`.
 * @param {ParentNode} root
 */
export function localize(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(/** @type {string} */ (el.getAttribute("data-i18n")));
  for (const attr of ["title", "placeholder", "aria-label"]) {
    for (const el of root.querySelectorAll(`[data-i18n-${attr}]`)) {
      el.setAttribute(attr, t(/** @type {string} */ (el.getAttribute(`data-i18n-${attr}`))));
    }
  }
  document.documentElement.lang = chrome.i18n.getUILanguage();
}
