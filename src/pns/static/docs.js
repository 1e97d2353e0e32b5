// Renders /openapi.json as a page: one section per operation with its headers, security,
// request fields (required ones marked), the fields of its answer's data, and its codes.
// Hand-written and served by pns itself: the machines it runs on may be offline.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function resolve(doc, schema) {
  let seen = 0;
  while (schema && schema.$ref && seen++ < 20) {
    schema = schema.$ref.replace(/^#\//, "").split("/").reduce((node, key) => node[key], doc);
  }
  return schema || {};
}

function typeName(doc, schema) {
  schema = resolve(doc, schema);
  if (schema.anyOf) return schema.anyOf.map((s) => typeName(doc, s)).join(" | ");
  if (schema.type === "array") return typeName(doc, schema.items) + "[]";
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  return schema.type || "any";
}

function fieldRows(doc, schema, prefix) {
  schema = resolve(doc, schema);
  const required = new Set(schema.required || []);
  const rows = [];
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    const spec = resolve(doc, raw);
    const isRequired = required.has(name);
    rows.push(el("tr", {},
      el("td", {}, el("code", {}, prefix + name)),
      el("td", {}, typeName(doc, spec)),
      el("td", isRequired ? { class: "required" } : {}, isRequired ? "required" : "optional"),
      el("td", {}, spec.description || "")));
    const items = spec.type === "array" ? resolve(doc, spec.items) : null;
    if (items && items.properties) rows.push(...fieldRows(doc, items, prefix + name + "[]."));
  }
  return rows;
}

function fieldsTable(doc, schema, prefix) {
  const table = el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"),
    el("th", {}, ""), el("th", {}, "meaning")));
  table.append(...fieldRows(doc, schema, prefix));
  const anyOf = resolve(doc, schema).anyOf;
  if (anyOf) {
    const names = anyOf.map((s) => (s.required || []).join(", ")).join(" or ");
    table.append(el("tr", {}, el("td", { colspan: "4" }, "At least one of: " + names)));
  }
  return table;
}

function render(doc) {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.title = doc.info.title;
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  main.replaceChildren();
  const schemes = (doc.components || {}).securitySchemes || {};
  const auth = el("section", {}, el("h2", { id: "auth" }, "Authentication"));
  for (const [name, scheme] of Object.entries(schemes)) {
    auth.append(el("p", {}, el("code", {}, scheme.name), " header: ", scheme.description || ""));
  }
  main.append(auth);
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const id = op.operationId || path;
      toc.append(el("a", { href: "#" + id }, id));
      const section = el("section", {},
        el("h2", { id }, el("span", { class: "method" }, method.toUpperCase()), path),
        el("p", {}, op.summary || ""));
      if (op.description) section.append(el("pre", {}, op.description));
      if (op.parameters && op.parameters.length) {
        const table = el("table", {}, el("tr", {}, el("th", {}, "header"), el("th", {}, ""),
          el("th", {}, "meaning")));
        for (const p of op.parameters) {
          table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)),
            el("td", p.required ? { class: "required" } : {}, p.required ? "required" : "optional"),
            el("td", {}, p.description || "")));
        }
        section.append(el("h3", {}, "Headers"), table);
      }
      const body = op.requestBody && op.requestBody.content["application/json"];
      if (body) section.append(el("h3", {}, "Body"), fieldsTable(doc, body.schema, ""));
      const ok = op.responses["200"] && op.responses["200"].content;
      if (ok) {
        const answer = resolve(doc, ok["application/json"].schema);
        const data = (answer.properties || {}).data;
        if (data) section.append(el("h3", {}, "Answer data"), fieldsTable(doc, data, "data."));
      }
      const codes = Object.entries(op.responses).map(([status, r]) => status + ": " + r.description);
      section.append(el("h3", {}, "HTTP statuses"), el("p", {}, codes.join("; ")));
      main.append(section);
    }
  }
}

fetch("/openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch((error) => {
    document.getElementById("operations").textContent = "Cannot load /openapi.json: " + error;
  });
