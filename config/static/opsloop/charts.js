/* How every admin chart reads, loaded right after Chart.js (config/templates/admin/opsloop_charts.html).
 * - Each series has a colour of its own: a dataset that names none gets the next palette colour
 *   not already used in its chart (Chart.js's own palette gives up as soon as one dataset names one).
 * - Every bar of a bar chart keeps its label: no automatic skipping of category labels on bars.
 * - A period that has not happened yet has no value (null, drawn as nothing), never 0: the data
 *   says so; `OpsloopCharts.blankFuture(labels, values)` does it for a series keyed by ISO dates. */
(function () {
  if (typeof Chart === "undefined") { return; }
  var PALETTE = ["#417690", "#e0a03c", "#2e7d32", "#c62828", "#6a1b9a", "#00838f", "#8d6e63", "#ad1457",
                 "#9e9d24", "#5c6bc0", "#ef6c00", "#26a69a"];

  function named(colour) { return colour !== undefined && colour !== null && colour !== ""; }

  Chart.register({
    id: "opsloopSeriesColours",
    beforeInit: function (chart) {
      var datasets = chart.config.data.datasets || [];
      var used = {};
      datasets.forEach(function (d) {
        [d.backgroundColor, d.borderColor].forEach(function (c) { if (typeof c === "string") { used[c.toLowerCase()] = true; } });
      });
      var free = PALETTE.filter(function (c) { return !used[c]; });
      var next = 0;
      var perSlice = ["pie", "doughnut", "polarArea"].indexOf(chart.config.type) >= 0;
      datasets.forEach(function (d) {
        if (named(d.backgroundColor) || named(d.borderColor)) { return; }
        if (perSlice) {  // a slice is a series of its own: one colour each
          d.backgroundColor = (d.data || []).map(function (_v, i) { return PALETTE[i % PALETTE.length]; });
          return;
        }
        var colour = free.length ? free[next % free.length] : PALETTE[next % PALETTE.length];
        next += 1;
        d.borderColor = colour;
        d.backgroundColor = colour;
      });
    }
  });

  // Bars stand for named things (a tier, a variant, a day): each keeps its label, rotated if need be.
  if (Chart.overrides && Chart.overrides.bar && Chart.overrides.bar.scales && Chart.overrides.bar.scales._index_) {
    Chart.overrides.bar.scales._index_.ticks = Object.assign({}, Chart.overrides.bar.scales._index_.ticks, {autoSkip: false});
  }

  window.OpsloopCharts = {
    palette: PALETTE,
    blankFuture: function (labels, values, today) {
      var now = today || new Date().toISOString().slice(0, 10);
      return values.map(function (v, i) { return String(labels[i]).slice(0, 10) > now ? null : v; });
    }
  };
})();
