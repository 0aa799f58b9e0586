// Sorting and filtering for the retk leaderboard. No dependencies; works from file://.
(function () {
  "use strict";

  function cellValue(row, column, type) {
    var cell = row.cells[column];
    if (!cell) return null;
    var raw = cell.getAttribute("data-value");
    if (raw === null) raw = cell.textContent;
    if (type === "number") {
      if (raw === "") return null;
      var number = parseFloat(raw);
      return isNaN(number) ? null : number;
    }
    return raw.toLowerCase();
  }

  function sortTable(table, column, header) {
    var type = header.getAttribute("data-type") || "text";
    var current = header.getAttribute("aria-sort");
    // Numbers sort best-first (descending) on the first click, text A to Z.
    var descending = current ? current === "ascending" : type === "number";
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) headers[i].removeAttribute("aria-sort");
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, column, type), y = cellValue(b, column, type);
      if (x === null && y === null) return 0;
      if (x === null) return 1;   // missing values always last
      if (y === null) return -1;
      if (x < y) return descending ? 1 : -1;
      if (x > y) return descending ? -1 : 1;
      return 0;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function applyFilters() {
    var family = document.getElementById("filter-family").value;
    var dataset = document.getElementById("filter-dataset").value;
    document.querySelectorAll("[data-family]").forEach(function (element) {
      var hidden = family !== "" && element.getAttribute("data-family") !== family;
      element.classList.toggle("filtered-out", hidden);
    });
    document.querySelectorAll("section[data-dataset]").forEach(function (section) {
      section.classList.toggle("filtered-out", dataset !== "" && section.getAttribute("data-dataset") !== dataset);
    });
    var overall = document.getElementById("overall");
    if (overall) overall.classList.toggle("filtered-out", dataset !== "");
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("table.sortable").forEach(function (table) {
      var headers = table.tHead.rows[0].cells;
      Array.prototype.forEach.call(headers, function (header, column) {
        header.setAttribute("tabindex", "0");
        header.addEventListener("click", function () { sortTable(table, column, header); });
        header.addEventListener("keydown", function (event) {
          if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column, header); }
        });
      });
    });
    var family = document.getElementById("filter-family");
    var dataset = document.getElementById("filter-dataset");
    if (family && dataset) {
      family.addEventListener("change", applyFilters);
      dataset.addEventListener("change", applyFilters);
      applyFilters();
    }
    document.documentElement.setAttribute("data-ready", "1");
  });
})();
