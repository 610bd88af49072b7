/* The condition and action editors of routing rules, automations and macros in Django admin.

   The form field stays a textarea of JSON (routing.admin.RowsWidget): this script hides it
   behind rows of menus (a condition's field, operator and value; an action and what it
   takes) and writes the rows back into it as JSON on every change, so the server validates
   what it always did. A list the rows cannot show as it is (a value of a shape the form has
   no input for) stays as JSON, untouched, with a note saying which item. "Edit as JSON"
   switches by hand. No build step, no dependencies. */
(function () {
  "use strict";

  const NO_VALUE = new Set(["exists", "not_exists"]);
  const MANY = new Set(["in", "not_in"]);
  const WORD_LISTS = new Set(["in", "not_in", "contains", "not_contains"]);
  const NUMBERS = new Set(["gt", "gte", "lt", "lte"]);

  function make(tag, properties, children) {
    const node = Object.assign(document.createElement(tag), properties || {});
    for (const child of children || []) node.append(child);
    return node;
  }

  // "refund, reembolso" is two words; a word with a comma of its own stays JSON (see load).
  function words(text) {
    return text.split(",").map((word) => word.trim()).filter(Boolean);
  }

  // An attribute's value as the CRM would have sent it: 20 is a number, "pro" a text, and
  // so are "007" and "1.10", which a number would change (and "contains" would then miss).
  function scalar(text) {
    const trimmed = text.trim();
    const number = Number(trimmed);
    const exact = String(number) === trimmed && (Number.isSafeInteger(number) || !Number.isInteger(number));
    return exact ? number : trimmed;
  }

  // A whole number JavaScript cannot hold exactly: shown, it would be saved rounded.
  function inexact(value) {
    if (typeof value === "number") return Number.isInteger(value) && !Number.isSafeInteger(value);
    if (value && typeof value === "object") return Object.values(value).some(inexact);
    return false;
  }

  function shown(value) {
    return Array.isArray(value) ? value.join(", ") : value === undefined ? "" : String(value);
  }

  /* One value's input, as `spec` describes it: `choices` ([code, label] pairs: a menu, or
     checkboxes when `many`), or `kind` "times" (a pair), "number", "longtext", "attribute"
     (numbers read as numbers), else text (words split at commas when `many`). Returns the
     nodes to show, a function reading the value back as JSON holds it, and what of `given`
     is not among the choices (a deleted team, an agent made inactive). */
  function valueInput(spec, given) {
    const label = spec.label || "Value";
    if (!spec.choices) return [...otherInput(spec, given, label), []];
    const codes = new Set(spec.choices.map(([code]) => JSON.stringify(code)));
    const givens = Array.isArray(given) ? given : given === undefined || given === "" ? [] : [given];
    const missing = givens.filter((code) => !codes.has(JSON.stringify(code)));
    if (spec.many) {
      const chosen = new Set(givens.map((code) => JSON.stringify(code)));
      const boxes = spec.choices.map(([code]) => make("input", { type: "checkbox", checked: chosen.has(JSON.stringify(code)) }));
      const labels = spec.choices.map(([, name], n) => make("label", { className: "rows-choice" }, [boxes[n], " " + name]));
      const group = make("span", { className: "rows-choices", role: "group", ariaLabel: label }, labels);
      group.classList.toggle("rows-long", boxes.length > 8);
      const read = () => spec.choices.filter((choice, n) => boxes[n].checked).map(([code]) => code);
      return [[group], read, missing];
    }
    const menu = make("select", { ariaLabel: label });
    menu.add(new Option("choose…", ""));
    for (const [code, name] of spec.choices) menu.add(new Option(name, JSON.stringify(code)));
    menu.value = givens.length ? JSON.stringify(given) : "";
    return [[menu], () => (menu.value ? JSON.parse(menu.value) : ""), missing];
  }

  function otherInput(spec, given, label) {
    if (spec.kind === "times") {
      const [from, to] = Array.isArray(given) ? given : ["09:00", "17:00"];
      const inputs = [from, to].map((time, n) => make("input", { type: "time", value: time, ariaLabel: n ? "Until" : "From" }));
      return [[inputs[0], " and ", inputs[1]], () => inputs.map((input) => input.value)];
    }
    if (spec.kind === "longtext") {
      const area = make("textarea", { rows: 2, cols: 50, value: shown(given), ariaLabel: label });
      return [[area], () => area.value];
    }
    const numeric = spec.kind === "number";
    const input = make("input", { type: numeric ? "number" : "text", step: "any", value: shown(given), ariaLabel: label, size: 24 });
    if (spec.many) input.placeholder = "one, or several separated by commas";
    const one = spec.kind === "attribute" ? scalar : (text) => text;
    if (numeric) return [[input], () => (input.value === "" ? "" : Number(input.value))];
    if (spec.many) return [[input], () => words(input.value).map(one)];
    return [[input], () => one(input.value)];
  }

  // Removes its row; the focus goes to the next row, else the one before, else "Add".
  function removeButton(item, what) {
    const button = make("button", { type: "button", textContent: "Remove", ariaLabel: "Remove this " + what });
    button.addEventListener("click", () => {
      const list = item.parentNode;
      const near = item.nextElementSibling || item.previousElementSibling;
      const next = near ? near.querySelector("select") : list.parentNode.querySelector(".rows-add");
      item.remove();
      list.dispatchEvent(new Event("change", { bubbles: true }));
      if (next) next.focus();
    });
    return button;
  }

  // A condition: field (plus an attribute's name), operator, value.
  function conditionRow(schema, condition) {
    const item = make("li", { className: "rows-row" });
    const fieldMenu = make("select", { ariaLabel: "Field" });
    for (const field of schema.fields) fieldMenu.add(new Option(field.label, field.name));
    const attribute = make("input", { type: "text", ariaLabel: "Attribute", placeholder: "attribute, e.g. plan", size: 14 });
    const opMenu = make("select", { ariaLabel: "Operator" });
    const value = make("span", { className: "rows-value" });
    item.append(make("div", { className: "rows-line" }, [fieldMenu, attribute, opMenu, value, removeButton(item, "condition")]));
    let readValue = () => undefined;

    // Whether the field's value is a list under an operator (else one value, or none).
    function many(field, op) {
      if (field.choices || field.kind === "attribute") return MANY.has(op);
      if (field.kind === "times") return true;
      return field.kind !== "number" && WORD_LISTS.has(op);
    }

    function drawValue(given) {
      const field = schema.fieldOf(fieldMenu.value);
      const op = opMenu.value;
      readValue = () => undefined;
      value.replaceChildren();
      if (NO_VALUE.has(op)) return;
      const numeric = field.kind === "attribute" && NUMBERS.has(op);
      const spec = { choices: field.choices, kind: numeric ? "number" : field.kind, many: many(field, op) };
      const [nodes, read, missing] = valueInput(spec, given);
      value.append(...nodes);
      readValue = read;
      item.missing = missing;
    }

    function drawOps(op, given) {
      const field = schema.fieldOf(fieldMenu.value);
      opMenu.replaceChildren(...field.ops.map((code) => new Option(schema.operators[code] || code, code)));
      opMenu.value = field.ops.includes(op) ? op : field.ops[0];
      attribute.hidden = field.name !== "customer.";
      drawValue(given);
    }

    const field = schema.fieldOf(condition.field) || schema.fields[0];
    fieldMenu.value = field.name;
    attribute.value = field.name === "customer." ? String(condition.field).slice("customer.".length) : "";
    drawOps(condition.op, condition.value);
    fieldMenu.addEventListener("change", () => drawOps(opMenu.value));
    // What was typed carries over to the new operator: "is pro" becomes "is any of pro".
    opMenu.addEventListener("change", () => {
      const before = readValue();
      if (before === undefined || before === "") return drawValue();
      const wanted = many(schema.fieldOf(fieldMenu.value), opMenu.value);
      if (Array.isArray(before) === wanted) drawValue(before);
      else drawValue(wanted ? [before] : before[0]);
    });
    item.read = () => {
      const name = fieldMenu.value === "customer." ? "customer." + attribute.value.trim() : fieldMenu.value;
      const read = { field: name, op: opMenu.value };
      const given = readValue();
      if (given !== undefined) read.value = given;
      return read;
    };
    return item;
  }

  // An action: what to do, and what it takes (an agent, tags, a text...).
  function actionRow(schema, action) {
    const actions = new Map(schema.actions.map((kind) => [kind.name, kind]));
    const item = make("li", { className: "rows-row" });
    const menu = make("select", { ariaLabel: "Action" });
    for (const kind of schema.actions) menu.add(new Option(kind.label, kind.name));
    const params = make("span", { className: "rows-value" });
    item.append(make("div", { className: "rows-line" }, [menu, params, removeButton(item, "action")]));
    let reads = [];

    function draw(given) {
      params.replaceChildren();
      item.missing = [];
      reads = actions.get(menu.value).params.map((param) => {
        const [nodes, read, missing] = valueInput(param, given[param.key]);
        params.append(...nodes);
        item.missing.push(...missing);
        return [param, read];
      });
    }

    menu.value = actions.has(action.action) ? action.action : schema.actions[0].name;
    draw(action);
    menu.addEventListener("change", () => draw({}));
    item.read = () => {
      const read = { action: menu.value };
      for (const [param, value] of reads) {
        const given = value();
        if (!(param.optional && given === "")) read[param.key] = given;
      }
      return read;
    };
    return item;
  }

  const ROWS = {
    conditions: {
      row: conditionRow,
      what: "condition",
      fits: (schema, item) => Boolean(schema.fieldOf(item.field)),
      blank: (schema) => ({ field: schema.fields[0].name, op: schema.fields[0].ops[0] }),
    },
    actions: {
      row: actionRow,
      what: "action",
      fits: (schema, item) => schema.actions.some((kind) => kind.name === item.action),
      blank: (schema) => ({ action: schema.actions[0].name }),
    },
  };

  // The same item, its keys in one order and its lists sorted: what a row must give back
  // unchanged. Sorted, since ticked boxes come back in the menu's order and "any of 2, 1" is
  // "any of 1, 2"; the rows keep the order of what is an order (a time range, typed words).
  function canonical(item) {
    const sorted = (value) => (Array.isArray(value) ? value.map((v) => JSON.stringify(v)).sort() : value);
    return JSON.stringify(Object.keys(item).sort().map((key) => [key, sorted(item[key])]));
  }

  function editor(area) {
    const schema = JSON.parse(area.dataset.rows);
    const rows = ROWS[schema.rows];
    const byName = new Map((schema.fields || []).map((field) => [field.name, field]));
    schema.fieldOf = (name) => typeof name !== "string" ? null
      : byName.get(name) || (name.startsWith("customer.") ? byName.get("customer.") : null);
    const what = rows.what;
    const list = make("ol", { className: "rows-list" });
    const add = make("button", { type: "button", className: "rows-add", textContent: "Add " + (what === "action" ? "an " : "a ") + what });
    const box = make("div", { className: "rows-editor" }, [list, add]);
    const note = make("p", { className: "rows-note", hidden: true });
    const toggle = make("button", { type: "button", className: "rows-toggle" });
    const help = document.getElementById(area.id + "_helptext"); // it explains the JSON

    function write() {
      const lines = [...list.children].map((item) => "  " + JSON.stringify(item.read()));
      area.value = lines.length ? "[\n" + lines.join(",\n") + "\n]" : "[]";
    }

    // Rows for the textarea's JSON, or why they cannot show it as it is.
    function load() {
      let parsed;
      try {
        parsed = JSON.parse(area.value.trim() || "[]");
      } catch (error) {
        return "This is not valid JSON; correct it here.";
      }
      if (!Array.isArray(parsed)) return "This must be a list; correct it here.";
      const items = [];
      for (const [index, given] of parsed.entries()) {
        const which = what[0].toUpperCase() + what.slice(1) + " " + (index + 1);
        const odd = which + " cannot be shown in the form; edit it here.";
        if (!given || typeof given !== "object" || Array.isArray(given) || !rows.fits(schema, given)) return odd;
        if (inexact(given)) return which + " holds a number too long for the form; edit it here.";
        let item;
        try {
          item = rows.row(schema, given);
        } catch (error) {
          return odd;
        }
        if (item.missing.length) {
          const named = item.missing.map((code) => JSON.stringify(code)).join(", ");
          return which + " names " + named + ", which is not among the choices (deleted, or no longer active); edit it here.";
        }
        if (canonical(item.read()) !== canonical(given)) return odd;
        items.push(item);
      }
      list.replaceChildren(...items);
      return "";
    }

    function show(asJson, why) {
      box.hidden = asJson;
      area.hidden = !asJson;
      if (help) help.hidden = !asJson;
      note.hidden = !why;
      note.textContent = why || "";
      toggle.textContent = asJson ? "Edit with the form" : "Edit as JSON";
    }

    toggle.addEventListener("click", () => {
      if (box.hidden) {
        const why = load();
        show(Boolean(why), why);
      } else show(true, "");
    });
    add.addEventListener("click", () => {
      const item = rows.row(schema, rows.blank(schema));
      list.append(item);
      write();
      item.querySelector("select").focus();
    });
    box.addEventListener("input", write);
    box.addEventListener("change", write);
    const why = load();
    area.before(make("div", {}, [box, note, toggle]));
    show(Boolean(why), why);
  }

  // Each list on its own: one the script trips on stays plain JSON, and the others work.
  function start() {
    for (const area of document.querySelectorAll("textarea[data-rows]")) {
      try {
        editor(area);
      } catch (error) {
        console.error("The rows editor could not start; the JSON stays editable.", error);
      }
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
