"use strict";
(function () {
  const table = document.getElementById("results");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const filter = document.getElementById("filter");
  const shown = document.getElementById("shown");

  function value(row, key, type) {
    const raw = row.dataset[key] || "";
    return type === "num" ? parseFloat(raw) : raw.toLocaleLowerCase();
  }

  function sortBy(button) {
    const key = button.dataset.sort;
    const type = button.dataset.type;
    const th = button.parentElement;
    const descending = th.getAttribute("aria-sort") === "ascending";
    for (const other of table.tHead.querySelectorAll("th")) other.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    const sign = descending ? -1 : 1;
    const sorted = rows.slice().sort(function (a, b) {
      const x = value(a, key, type);
      const y = value(b, key, type);
      if (x < y) return -sign;
      if (x > y) return sign;
      return value(a, "row", "num") - value(b, "row", "num");
    });
    body.append(...sorted);
  }

  function applyFilter() {
    const label = filter.value;
    let count = 0;
    for (const row of rows) {
      row.hidden = label !== "" && row.dataset.label !== label;
      if (!row.hidden) count += 1;
    }
    shown.textContent = label === "" ? "" : count + " shown";
  }

  for (const button of table.tHead.querySelectorAll("button[data-sort]")) {
    button.addEventListener("click", function () { sortBy(button); });
  }
  filter.addEventListener("change", applyFilter);
})();
