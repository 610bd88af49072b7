/* The condition editor of routing rules and automations in Django admin.

   The form field stays a textarea of JSON (routing.admin.ConditionsWidget): this script hides
   it behind rows of field, operator and value, and writes the rows back into it as JSON on
   every change, so the server validates what it always did. A list the rows cannot show as
   it is (a value of a shape the form has no input for) stays as JSON, untouched, with a note
   saying which condition. "Edit as JSON" switches by hand. No build step, no dependencies. */
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

  // "refund, reembolso" is two words; a value with a comma of its own stays JSON (see fits).
  function words(text) {
    return text.split(",").map((word) => word.trim()).filter(Boolean);
  }

  // An attribute's value as the CRM would have sent it: 20 is a number, "pro" a text.
  function scalar(text) {
    const trimmed = text.trim();
    return /^-?\d+(\.\d+)?$/.test(trimmed) ? Number(trimmed) : trimmed;
  }

  function number(text) {
    return text.trim() === "" || isNaN(Number(text)) ? text : Number(text);
  }

  // Whether a field's value is a list under an operator (else one value, or none).
  function listy(field, op) {
    if (field.choices || field.kind === "attribute") return MANY.has(op);
    if (field.kind === "times") return true;
    return field.kind !== "number" && WORD_LISTS.has(op);
  }

  function shown(value) {
    return Array.isArray(value) ? value.join(", ") : value === undefined ? "" : String(value);
  }

  function editor(area) {
    const schema = JSON.parse(area.dataset.conditions);
    const fields = new Map(schema.fields.map((field) => [field.name, field]));
    const list = make("ol", { className: "conditions-rows" });
    const note = make("p", { className: "conditions-note", hidden: true });
    const add = make("button", { type: "button", textContent: "Add a condition" });
    const toggle = make("button", { type: "button", className: "conditions-toggle" });
    const rows = make("div", { className: "conditions-editor" }, [list, add]);
    area.before(make("div", {}, [rows, note, toggle]));

    function fieldOf(name) {
      return fields.get(name) || (name.startsWith("customer.") ? fields.get("customer.") : null);
    }

    // One condition as a row; row.read() gives it back as JSON would hold it.
    function row(condition) {
      const item = make("li", { className: "conditions-row" });
      const fieldMenu = make("select", { ariaLabel: "Field" });
      for (const field of schema.fields) fieldMenu.add(new Option(field.label, field.name));
      const attribute = make("input", {
        type: "text",
        ariaLabel: "Attribute",
        placeholder: "attribute, e.g. plan",
        size: 14,
      });
      const opMenu = make("select", { ariaLabel: "Operator" });
      const value = make("span", { className: "conditions-value" });
      const remove = make("button", { type: "button", textContent: "Remove", ariaLabel: "Remove this condition" });
      item.append(make("div", { className: "conditions-line" }, [fieldMenu, attribute, opMenu, value, remove]));
      let readValue = () => undefined;

      function choicesOf(field) {
        return field.choices.map(([code, label]) => ({ code, label }));
      }

      function drawValue(given) {
        const field = fields.get(fieldMenu.value);
        const op = opMenu.value;
        value.replaceChildren();
        readValue = () => undefined;
        if (NO_VALUE.has(op)) return;
        if (field.choices && listy(field, op)) {
          const chosen = new Set((Array.isArray(given) ? given : []).map(String));
          const boxes = choicesOf(field).map(({ code, label }) => {
            const box = make("input", { type: "checkbox", checked: chosen.has(String(code)) });
            box.dataset.code = JSON.stringify(code);
            value.append(make("label", { className: "conditions-choice" }, [box, " " + label]));
            return box;
          });
          value.classList.toggle("conditions-long", boxes.length > 8);
          readValue = () => boxes.filter((box) => box.checked).map((box) => JSON.parse(box.dataset.code));
          return;
        }
        if (field.choices) {
          const menu = make("select", { ariaLabel: "Value" });
          menu.add(new Option("choose…", ""));
          for (const { code, label } of choicesOf(field)) menu.add(new Option(label, JSON.stringify(code)));
          menu.value = given === undefined ? "" : JSON.stringify(given);
          value.append(menu);
          readValue = () => (menu.value ? JSON.parse(menu.value) : "");
          return;
        }
        if (field.kind === "times") {
          const [from, to] = Array.isArray(given) ? given : ["09:00", "17:00"];
          const inputs = [from, to].map((time, n) =>
            make("input", { type: "time", value: time, ariaLabel: n ? "Until" : "From" }));
          value.append(inputs[0], " and ", inputs[1]);
          readValue = () => inputs.map((input) => input.value);
          return;
        }
        const numeric = field.kind === "number" || (field.kind === "attribute" && NUMBERS.has(op));
        const input = make("input", {
          type: numeric ? "number" : "text",
          step: "any",
          value: shown(given),
          ariaLabel: "Value",
          size: 24,
        });
        const many = listy(field, op);
        if (many) input.placeholder = "one, or several separated by commas";
        value.append(input);
        const one = field.kind === "attribute" ? scalar : (text) => text;
        if (numeric) readValue = () => number(input.value);
        else if (many) readValue = () => words(input.value).map(one);
        else readValue = () => one(input.value);
      }

      function drawOps(op, given) {
        const field = fields.get(fieldMenu.value);
        opMenu.replaceChildren(...field.ops.map((code) => new Option(schema.operators[code] || code, code)));
        opMenu.value = field.ops.includes(op) ? op : field.ops[0];
        attribute.hidden = field.name !== "customer.";
        drawValue(given);
      }

      const field = fieldOf(condition.field) || schema.fields[0];
      fieldMenu.value = field.name;
      attribute.value = field.name === "customer." ? condition.field.slice("customer.".length) : "";
      drawOps(condition.op, condition.value);
      fieldMenu.addEventListener("change", () => drawOps(opMenu.value));
      // What was typed carries over to the new operator: "is pro" becomes "is any of pro".
      opMenu.addEventListener("change", () => {
        const before = readValue();
        if (before === undefined || before === "") return drawValue();
        const wanted = listy(fields.get(fieldMenu.value), opMenu.value);
        if (Array.isArray(before) === wanted) drawValue(before);
        else drawValue(wanted ? [before] : before[0]);
      });
      remove.addEventListener("click", () => {
        item.remove();
        write();
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

    function conditions() {
      return [...list.children].map((item) => item.read());
    }

    function write() {
      const lines = conditions().map((condition) => "  " + JSON.stringify(condition));
      area.value = lines.length ? "[\n" + lines.join(",\n") + "\n]" : "[]";
    }

    // The same condition, keys in the editor's order: what a row must give back unchanged.
    function canonical(condition) {
      const { field, op, value } = condition;
      return JSON.stringify(value === undefined ? { field, op } : { field, op, value });
    }

    // Rows for the textarea's JSON, or the reason they cannot show it as it is.
    function load() {
      let parsed;
      try {
        parsed = JSON.parse(area.value.trim() || "[]");
      } catch (error) {
        return "The conditions are not valid JSON; correct them here.";
      }
      if (!Array.isArray(parsed)) return "The conditions must be a list; correct them here.";
      const items = [];
      for (const [index, condition] of parsed.entries()) {
        const unknown = "Condition " + (index + 1) + " cannot be shown in the form; edit it here.";
        if (!condition || typeof condition !== "object" || !fieldOf(String(condition.field))) return unknown;
        const item = row(condition);
        if (canonical(item.read()) !== canonical(condition)) return unknown;
        items.push(item);
      }
      list.replaceChildren(...items);
      return "";
    }

    // The field's help explains the JSON: shown with it.
    const help = document.getElementById(area.id + "_helptext");

    function show(asJson, why) {
      rows.hidden = asJson;
      area.hidden = !asJson;
      if (help) help.hidden = !asJson;
      note.hidden = !why;
      note.textContent = why || "";
      toggle.textContent = asJson ? "Edit with the form" : "Edit as JSON";
    }

    toggle.addEventListener("click", () => {
      if (rows.hidden) {
        const why = load();
        show(Boolean(why), why);
      } else show(true, "");
    });
    add.addEventListener("click", () => {
      const item = row({ field: schema.fields[0].name, op: schema.fields[0].ops[0] });
      list.append(item);
      write();
      item.querySelector("select").focus();
    });
    rows.addEventListener("input", write);
    rows.addEventListener("change", write);
    const why = load();
    show(Boolean(why), why);
  }

  function start() {
    for (const area of document.querySelectorAll("textarea[data-conditions]")) editor(area);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
