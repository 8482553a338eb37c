/* The admin's segment builder: rows of conditions written into the definition's JSON textarea,
 * checked live (size, sample, warnings, errors) through the segment admin's check/ URL.
 * The condition kinds and their choices come from the page (campaigns/segment_builder.py).
 * Rows are conditions or groups ("any of" / "all of"), groups inside groups up to
 * MAX_GROUP_DEPTH levels, and each row or group may be negated ("not"); a tree the rows cannot
 * draw (deeper groups, a `not` of a `not`) is edited as JSON. Strings go through Django's
 * JavaScript catalogue (`gettext`), loaded by the widget's template. */
(function () {
  "use strict";

  var MAX_GROUP_DEPTH = 3;

  function _(text) {
    return typeof window.gettext === "function" ? window.gettext(text) : text;
  }

  function interpolate(format, values) {
    if (typeof window.interpolate === "function") { return window.interpolate(format, values, true); }
    return format.replace(/%\((\w+)\)s/g, function (m, k) { return String(values[k]); });
  }

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

  var NUMBER_OPS = ["gte", "lte"];

  function isNumber(t) {
    return /^-?\d+(\.\d+)?$/.test(t);
  }

  function scalar(text, like, op) {
    // A typed value as the definition stores it. The definition's own type wins: a string stays a
    // string ("01234" is a code, not 1234) unless the operator picks a number comparison; a new
    // value (`like` unknown) is a number or true/false only when written the way JSON writes it.
    var t = String(text).trim();
    if (NUMBER_OPS.indexOf(op) >= 0) { return isNumber(t) ? Number(t) : t; }
    if (like === "string") { return t; }
    if (like === "number") { return isNumber(t) ? Number(t) : t; }
    if (t === "true") { return true; }
    if (t === "false") { return false; }
    if (like === undefined && isNumber(t) && String(Number(t)) === t) { return Number(t); }
    return t;
  }

  function typeOf(value) {
    // The JSON type a trait condition's value had when the row was drawn (of its first item for
    // a list); undefined for a new, empty value.
    var first = Array.isArray(value) ? value[0] : value;
    return first === undefined || first === null || first === "" ? undefined : typeof first;
  }

  // For tests: the conversion the rows apply to a typed value.
  window.opsloopSegmentScalar = scalar;

  function init(root) {
    var options = JSON.parse(document.getElementById("segment-builder-options").textContent);
    var kinds = {};
    options.kinds.forEach(function (k) { kinds[k.key] = k; });
    var textarea = document.getElementById(root.getAttribute("data-field"));
    var rows = root.querySelector(".sb-rows");
    var match = root.querySelector(".sb-match");
    var timer = null;

    function notBox(item, negated) {
      // "not": the row (or group) matches the people it would otherwise leave out.
      var box = el("input", {type: "checkbox", "class": "sb-not", title: _("Negate: people who do not match")});
      box.checked = !!negated;
      box.addEventListener("change", function () {
        item.classList.toggle("sb-negated", box.checked);
        changed();
      });
      item.classList.toggle("sb-negated", !!negated);
      item.sbNot = box;
      return el("label", {"class": "sb-not-label"}, [box, el("span", {text: " " + _("not")})]);
    }

    function leafRow(leaf, negated) {
      var key = Object.keys(leaf).filter(function (k) { return kinds[k]; })[0] || options.kinds[0].key;
      var row = el("div", {"class": "sb-row", "data-kind": key});
      row.appendChild(notBox(row, negated));
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
                                        placeholder: _("name, another name")}));
        }
      } else if (kind.shape === "trait") {
        row.appendChild(el("input", {"class": "sb-trait", list: "sb-traits", value: leaf.trait || "", placeholder: "city"}));
        row.appendChild(select(options.trait_ops, leaf.op || "eq", "sb-op"));
        var v = leaf.value === undefined ? "" : (Array.isArray(leaf.value) ? leaf.value.join(", ") : String(leaf.value));
        row.appendChild(el("input", {"class": "sb-value", value: v, placeholder: "Beijing"}));
        row.sbValueLike = typeOf(leaf.value);
      } else if (kind.shape === "event") {
        row.appendChild(el("input", {"class": "sb-event", list: "sb-events", value: leaf.event || "", placeholder: "order_paid"}));
        row.appendChild(select(options.event_ops, leaf.op || "gte", "sb-op"));
        row.appendChild(el("input", {"class": "sb-count", type: "number", min: "0", value: leaf.count === undefined ? 1 : leaf.count}));
        row.appendChild(el("span", {text: " " + _("times in the last") + " "}));
        row.appendChild(el("input", {"class": "sb-days", type: "number", min: "1", max: "3650",
                                      value: leaf.within_days === undefined ? 30 : leaf.within_days}));
        row.appendChild(el("span", {text: " " + _("days")}));
      } else if (kind.shape === "uplift") {
        row.appendChild(select(kind.choices, String(leaf.uplift === undefined ? kind.choices[0][0] : leaf.uplift), "sb-rule"));
        row.appendChild(el("span", {text: " " + _("top") + " "}));
        row.appendChild(el("input", {"class": "sb-percent", type: "number", min: "1", max: "100",
                                      value: leaf.top_percent === undefined ? 10 : leaf.top_percent}));
        row.appendChild(el("span", {text: " %"}));
      }
      var remove = el("button", {type: "button", "class": "button sb-remove", title: _("Remove"), text: "×"});
      row.appendChild(remove);
      kindSelect.addEventListener("change", function () {
        var fresh = {}; fresh[kindSelect.value] = [];
        if (kindSelect.value === "trait") { fresh = {trait: "", op: "eq", value: ""}; }
        if (kindSelect.value === "event") { fresh = {event: "", op: "gte", count: 1, within_days: 30}; }
        if (kindSelect.value === "uplift") { fresh = {uplift: kinds.uplift.choices[0][0], top_percent: 10}; }
        row.parentNode.replaceChild(leafRow(fresh, row.sbNot.checked), row);
        changed();
      });
      remove.addEventListener("click", function () { row.parentNode.removeChild(row); changed(); });
      row.addEventListener("input", changed);
      row.addEventListener("change", function (event) { if (event.target !== row.sbNot) { changed(); } });
      return row;
    }

    function groupRow(node, depth, negated) {
      // "any of" (or "all of") these conditions; groups nest up to MAX_GROUP_DEPTH levels.
      var key = node.all ? "all" : "any";
      var group = el("div", {"class": "sb-group", "data-kind": "group", "data-depth": String(depth)});
      var head = el("div", {"class": "sb-group-head"});
      head.appendChild(notBox(group, negated));
      var groupMatch = select([["any", _("any")], ["all", _("all")]], key, "sb-group-match");
      head.appendChild(el("span", {text: " " + _("Match") + " "}));
      head.appendChild(groupMatch);
      head.appendChild(el("span", {text: " " + _("of:")}));
      var remove = el("button", {type: "button", "class": "button sb-remove", title: _("Remove the group"), text: "×"});
      head.appendChild(remove);
      group.appendChild(head);
      var inner = el("div", {"class": "sb-rows"});
      (node[key] || []).forEach(function (child) { inner.appendChild(item(child, depth + 1)); });
      group.appendChild(inner);
      group.sbMatch = groupMatch;
      group.sbInner = inner;
      var add = el("button", {type: "button", "class": "button sb-add-inner", text: _("+ condition in this group")});
      group.appendChild(add);
      add.addEventListener("click", function () { inner.appendChild(leafRow({tag: []}, false)); changed(); });
      if (depth < MAX_GROUP_DEPTH) {
        var addGroup = el("button", {type: "button", "class": "button sb-add-inner-group", text: _("+ group in this group")});
        group.appendChild(addGroup);
        addGroup.addEventListener("click", function () {
          inner.appendChild(groupRow({any: [{tag: []}]}, depth + 1, false));
          changed();
        });
      }
      remove.addEventListener("click", function () { group.parentNode.removeChild(group); changed(); });
      groupMatch.addEventListener("change", changed);
      return group;
    }

    function item(node, depth) {
      // A drawable node (see `drawable`): a leaf or a group, either of them possibly negated.
      var negated = isNot(node);
      var shown = negated ? node.not : node;
      return isLeaf(shown) ? leafRow(shown, negated) : groupRow(shown, depth, negated);
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
                value: op === "in" ?
                  raw.split(",").map(function (t) { return scalar(t, row.sbValueLike, op); }).filter(function (x) { return x !== ""; }) :
                  scalar(raw, row.sbValueLike, op)};
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

    function readItem(node) {
      var read;
      if (node.getAttribute("data-kind") === "group") {
        read = {};
        read[node.sbMatch.value] = Array.prototype.map.call(node.sbInner.children, readItem);
      } else {
        read = readRow(node);
      }
      return node.sbNot.checked ? {not: read} : read;
    }

    function write() {
      var items = Array.prototype.map.call(rows.children, readItem);
      var definition = {};
      definition[match.value] = items;
      textarea.value = JSON.stringify(definition, null, 2);
      return definition;
    }

    function isLeaf(node) {
      return !!node && typeof node === "object" && !Array.isArray(node) &&
        Object.keys(node).some(function (k) { return kinds[k]; });
    }

    function isNot(node) {
      return !!node && typeof node === "object" && Object.keys(node).length === 1 &&
        !!node.not && typeof node.not === "object" && !Array.isArray(node.not);
    }

    function groupKey(node) {
      if (!node || typeof node !== "object" || Object.keys(node).length !== 1) { return null; }
      var key = Object.keys(node)[0];
      return (key === "any" || key === "all") && Array.isArray(node[key]) ? key : null;
    }

    function drawable(node, depth) {
      // What the rows can draw: leaves, groups up to MAX_GROUP_DEPTH deep, each possibly negated
      // once; anything else (a `not` of a `not`, deeper groups) is edited as JSON.
      var shown = isNot(node) ? node.not : node;
      if (isLeaf(shown)) { return true; }
      var key = groupKey(shown);
      return !!key && depth <= MAX_GROUP_DEPTH && shown[key].every(function (c) { return drawable(c, depth + 1); });
    }

    function show(answer) {
      var size = root.querySelector(".sb-size");
      var errors = root.querySelector(".sb-errors");
      var warnings = root.querySelector(".sb-warnings");
      errors.innerHTML = ""; warnings.innerHTML = "";
      (answer.errors || []).forEach(function (e) { errors.appendChild(el("li", {text: e})); });
      (answer.warnings || []).forEach(function (w) { warnings.appendChild(el("li", {"class": "warning", text: w})); });
      size.textContent = answer.size === null || answer.size === undefined ? "" :
        interpolate(_("%(size)s people now"), {size: answer.size.toLocaleString()}) +
        (answer.sample && answer.sample.length ? ". " + _("Sample:") + " " + answer.sample.join(", ") : "");
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
      var top = groupKey(definition);
      var items = top ? definition[top] : [definition];
      if (!items.every(function (node) { return drawable(node, 1); })) {
        root.querySelector(".sb-complex").hidden = false;
        root.querySelector(".sb-json").open = true;
        root.querySelector(".sb-add").hidden = true;
        root.querySelector(".sb-add-group").hidden = true;
        check(definition);
        return;
      }
      match.value = top || "all";
      items.forEach(function (node) { rows.appendChild(item(node, 1)); });
      if (Object.keys(definition).length && items.length) { check(definition); }
    }

    root.querySelector(".sb-add").addEventListener("click", function () {
      rows.appendChild(leafRow({tag: []}, false));
      changed();
    });
    root.querySelector(".sb-add-group").addEventListener("click", function () {
      rows.appendChild(groupRow({any: [{tag: []}]}, 1, false));
      changed();
    });
    match.addEventListener("change", changed);
    textarea.addEventListener("input", function () {
      // Typed JSON: checked as typed; the rows are redrawn from it on the next page load.
      clearTimeout(timer);
      timer = setTimeout(function () {
        try { check(JSON.parse(textarea.value)); } catch (e) { show({errors: [_("definition: not valid JSON yet")]}); }
      }, 400);
    });
    load();
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll(".segment-builder"), init);
  });
})();
