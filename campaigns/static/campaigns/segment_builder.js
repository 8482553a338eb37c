/* The admin's segment builder: rows of conditions written into the definition's JSON textarea,
 * checked live (size, sample, warnings, errors) through the segment admin's check/ URL.
 * The condition kinds and their choices come from the page (campaigns/segment_builder.py).
 * Rows are conditions, or groups ("any of" / "all of") of conditions one level deep; a deeper
 * tree, or `not`, is edited as JSON. */
(function () {
  "use strict";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }

  function select(options, value, cls) {
    var s = el("select", {"class": cls});
    options.forEach(function (o) {
      var opt = el("option", {value: o[0], text: o[1]});
      if (String(o[0]) === String(value)) { opt.selected = true; }
      s.appendChild(opt);
    });
    return s;
  }

  function csrf() {
    var m = document.cookie.match(/(?:^|; )csrftoken=([^;]*)/);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : (m ? decodeURIComponent(m[1]) : "");
  }

  function scalar(text) {
    // A typed value as the definition stores it: numbers and true/false as themselves.
    var t = String(text).trim();
    if (t === "true") { return true; }
    if (t === "false") { return false; }
    if (t !== "" && !isNaN(Number(t)) && /^-?\d+(\.\d+)?$/.test(t)) { return Number(t); }
    return t;
  }

  function init(root) {
    var options = JSON.parse(document.getElementById("segment-builder-options").textContent);
    var kinds = {};
    options.kinds.forEach(function (k) { kinds[k.key] = k; });
    var textarea = document.getElementById(root.getAttribute("data-field"));
    var rows = root.querySelector(".sb-rows");
    var match = root.querySelector(".sb-match");
    var timer = null;

    function leafRow(leaf) {
      var key = Object.keys(leaf).filter(function (k) { return kinds[k]; })[0] || options.kinds[0].key;
      var row = el("div", {"class": "sb-row", "data-kind": key});
      var kindSelect = select(options.kinds.map(function (k) { return [k.key, k.label]; }), key, "sb-kind");
      row.appendChild(kindSelect);
      var kind = kinds[key];
      if (kind.shape === "names") {
        var values = [].concat(leaf[key] || []);
        if (kind.choices) {
          var s = select(kind.choices, null, "sb-names");
          s.multiple = true;
          s.size = Math.min(kind.choices.length, 4);
          Array.prototype.forEach.call(s.options, function (o) { o.selected = values.indexOf(o.value) >= 0; });
          row.appendChild(s);
        } else {
          row.appendChild(el("input", {"class": "sb-names-text", list: "sb-" + key + "s", value: values.join(", "),
                                        placeholder: "name, another name"}));
        }
      } else if (kind.shape === "trait") {
        row.appendChild(el("input", {"class": "sb-trait", list: "sb-traits", value: leaf.trait || "", placeholder: "city"}));
        row.appendChild(select(options.trait_ops, leaf.op || "eq", "sb-op"));
        var v = leaf.value === undefined ? "" : (Array.isArray(leaf.value) ? leaf.value.join(", ") : String(leaf.value));
        row.appendChild(el("input", {"class": "sb-value", value: v, placeholder: "Beijing"}));
      } else if (kind.shape === "event") {
        row.appendChild(el("input", {"class": "sb-event", list: "sb-events", value: leaf.event || "", placeholder: "order_paid"}));
        row.appendChild(select(options.event_ops, leaf.op || "gte", "sb-op"));
        row.appendChild(el("input", {"class": "sb-count", type: "number", min: "0", value: leaf.count === undefined ? 1 : leaf.count}));
        row.appendChild(el("span", {text: " times in the last "}));
        row.appendChild(el("input", {"class": "sb-days", type: "number", min: "1", max: "3650",
                                      value: leaf.within_days === undefined ? 30 : leaf.within_days}));
        row.appendChild(el("span", {text: " days"}));
      } else if (kind.shape === "uplift") {
        row.appendChild(select(kind.choices, String(leaf.uplift === undefined ? kind.choices[0][0] : leaf.uplift), "sb-rule"));
        row.appendChild(el("span", {text: " top "}));
        row.appendChild(el("input", {"class": "sb-percent", type: "number", min: "1", max: "100",
                                      value: leaf.top_percent === undefined ? 10 : leaf.top_percent}));
        row.appendChild(el("span", {text: " %"}));
      }
      var remove = el("button", {type: "button", "class": "button sb-remove", title: "Remove", text: "×"});
      row.appendChild(remove);
      kindSelect.addEventListener("change", function () {
        var fresh = {}; fresh[kindSelect.value] = kinds[kindSelect.value].shape === "trait" ? "" : [];
        if (kindSelect.value === "trait") { fresh = {trait: "", op: "eq", value: ""}; }
        if (kindSelect.value === "event") { fresh = {event: "", op: "gte", count: 1, within_days: 30}; }
        if (kindSelect.value === "uplift") { fresh = {uplift: kinds.uplift.choices[0][0], top_percent: 10}; }
        row.parentNode.replaceChild(leafRow(fresh), row);
        changed();
      });
      remove.addEventListener("click", function () { row.parentNode.removeChild(row); changed(); });
      row.addEventListener("input", changed);
      row.addEventListener("change", changed);
      return row;
    }

    function groupRow(node) {
      // One level of nesting: "any of" (or "all of") these conditions, inside the top-level list.
      var key = node.any ? "any" : "all";
      var group = el("div", {"class": "sb-group", "data-kind": "group"});
      var head = el("div", {"class": "sb-group-head"});
      var groupMatch = select([["any", "any"], ["all", "all"]], key, "sb-group-match");
      head.appendChild(el("span", {text: "Match "}));
      head.appendChild(groupMatch);
      head.appendChild(el("span", {text: " of:"}));
      var remove = el("button", {type: "button", "class": "button sb-remove", title: "Remove the group", text: "×"});
      head.appendChild(remove);
      group.appendChild(head);
      var inner = el("div", {"class": "sb-rows"});
      (node[key] || []).forEach(function (leaf) { inner.appendChild(leafRow(leaf)); });
      group.appendChild(inner);
      var add = el("button", {type: "button", "class": "button sb-add-inner", text: "+ condition in this group"});
      group.appendChild(add);
      add.addEventListener("click", function () { inner.appendChild(leafRow({tag: []})); changed(); });
      remove.addEventListener("click", function () { group.parentNode.removeChild(group); changed(); });
      groupMatch.addEventListener("change", changed);
      return group;
    }

    function readRow(row) {
      var key = row.getAttribute("data-kind");
      var kind = kinds[key];
      var leaf = {};
      if (kind.shape === "names") {
        var picked;
        var multi = row.querySelector(".sb-names");
        if (multi) {
          picked = Array.prototype.filter.call(multi.options, function (o) { return o.selected; }).map(function (o) { return o.value; });
        } else {
          picked = row.querySelector(".sb-names-text").value.split(",").map(function (t) { return t.trim(); }).filter(Boolean);
        }
        leaf[key] = picked.length === 1 ? picked[0] : picked;
      } else if (kind.shape === "trait") {
        var op = row.querySelector(".sb-op").value;
        var raw = row.querySelector(".sb-value").value;
        leaf = {trait: row.querySelector(".sb-trait").value.trim(), op: op,
                value: op === "in" ? raw.split(",").map(scalar).filter(function (x) { return x !== ""; }) : scalar(raw)};
      } else if (kind.shape === "event") {
        leaf = {event: row.querySelector(".sb-event").value.trim(), op: row.querySelector(".sb-op").value,
                count: parseInt(row.querySelector(".sb-count").value || "0", 10),
                within_days: parseInt(row.querySelector(".sb-days").value || "0", 10)};
      } else if (kind.shape === "uplift") {
        leaf = {uplift: parseInt(row.querySelector(".sb-rule").value, 10),
                top_percent: parseInt(row.querySelector(".sb-percent").value || "0", 10)};
      }
      return leaf;
    }

    function readItem(item) {
      if (item.getAttribute("data-kind") !== "group") { return readRow(item); }
      var node = {};
      node[item.querySelector(".sb-group-match").value] = Array.prototype.map.call(
        item.querySelector(".sb-rows").children, readRow);
      return node;
    }

    function write() {
      var leaves = Array.prototype.map.call(rows.children, readItem);
      var definition = {};
      definition[match.value] = leaves;
      textarea.value = JSON.stringify(definition, null, 2);
      return definition;
    }

    function show(answer) {
      var size = root.querySelector(".sb-size");
      var errors = root.querySelector(".sb-errors");
      var warnings = root.querySelector(".sb-warnings");
      errors.innerHTML = ""; warnings.innerHTML = "";
      (answer.errors || []).forEach(function (e) { errors.appendChild(el("li", {text: e})); });
      (answer.warnings || []).forEach(function (w) { warnings.appendChild(el("li", {"class": "warning", text: w})); });
      size.textContent = answer.size === null || answer.size === undefined ? "" :
        answer.size.toLocaleString() + " people now" + (answer.sample && answer.sample.length ? ". Sample: " + answer.sample.join(", ") : "");
      root.setAttribute("data-size", answer.size === null || answer.size === undefined ? "" : answer.size);
    }

    function check(definition) {
      fetch(root.getAttribute("data-check-url"), {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json", "X-CSRFToken": csrf()},
        body: JSON.stringify(definition)
      }).then(function (r) { return r.json(); }).then(show).catch(function () {});
    }

    function changed() {
      var definition = write();
      clearTimeout(timer);
      timer = setTimeout(function () { check(definition); }, 300);
    }

    function load() {
      var definition;
      try { definition = JSON.parse(textarea.value || "null"); } catch (e) { definition = undefined; }
      if (!definition || typeof definition !== "object") { definition = {all: []}; }
      var top = definition.all ? "all" : (definition.any ? "any" : null);
      var leaves = top ? definition[top] : [definition];
      function isLeaf(leaf) {
        return leaf && typeof leaf === "object" && Object.keys(leaf).some(function (k) { return kinds[k]; });
      }
      function isGroup(node) {
        var inner = node && (node.any || node.all);
        return Array.isArray(inner) && Object.keys(node).length === 1 && inner.every(isLeaf);
      }
      var drawable = Array.isArray(leaves) && leaves.every(function (item) { return isLeaf(item) || isGroup(item); });
      if (!drawable) {
        root.querySelector(".sb-complex").hidden = false;
        root.querySelector(".sb-json").open = true;
        root.querySelector(".sb-add").hidden = true;
        root.querySelector(".sb-add-group").hidden = true;
        check(definition);
        return;
      }
      match.value = top || "all";
      leaves.forEach(function (item) { rows.appendChild(isLeaf(item) ? leafRow(item) : groupRow(item)); });
      if (Object.keys(definition).length && leaves.length) { check(definition); }
    }

    root.querySelector(".sb-add").addEventListener("click", function () {
      rows.appendChild(leafRow({tag: []}));
      changed();
    });
    root.querySelector(".sb-add-group").addEventListener("click", function () {
      rows.appendChild(groupRow({any: [{tag: []}]}));
      changed();
    });
    match.addEventListener("change", changed);
    textarea.addEventListener("input", function () {
      // Typed JSON: checked as typed; the rows are redrawn from it on the next page load.
      clearTimeout(timer);
      timer = setTimeout(function () {
        try { check(JSON.parse(textarea.value)); } catch (e) { show({errors: ["definition: not valid JSON yet"]}); }
      }, 400);
    });
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll(".segment-builder"), init);
  });
})();
