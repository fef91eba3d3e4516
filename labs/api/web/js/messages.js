// One message of a conversation as page elements: text (Markdown), thinking folded, tool calls,
// where the answer came from (your data as a table, or your documents as sources), and its numbers.

import { renderMarkdown } from "./markdown.js";

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// Amounts with two decimals (the currency symbol is the server's: it is in the answer's text).
const money = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const AMOUNTS = new Set(["amount", "amounts", "expenses", "income", "net", "total", "average", "median", "minimum", "maximum"]);

function cell(value, key) {
  if (typeof value === "number" && (AMOUNTS.has(key) || !Number.isInteger(value))) return money.format(value);
  return value === null || value === undefined ? "" : String(value);
}

// A transactions answer: the badge, the figures and the rows it was computed from.
function dataBlock(rag) {
  const data = rag.data ?? {};
  const block = el("section", { class: "from-data", "aria-label": "From your data" },
    el("p", { class: "badge" }, "From your data"));
  const figures = Object.entries(data.figures ?? {});
  const flat = figures.filter(([, value]) => typeof value !== "object" || Array.isArray(value));
  if (flat.length) {
    block.append(el("dl", { class: "figures" }, ...flat.flatMap(([name, value]) => [
      el("dt", {}, name.replace(/_/g, " ")),
      el("dd", {}, Array.isArray(value) ? value.map((v) => cell(v, name)).join(", ") : cell(value, name)),
    ])));
  }
  for (const [name, breakdown] of figures.filter(([, value]) => value && typeof value === "object" && !Array.isArray(value))) {
    // {key: number} or {key: {field: number}}: one row per key
    const rows = Object.entries(breakdown).map(([key, value]) =>
      ({ [name.replace(/^by_/, "")]: key, ...(typeof value === "object" ? value : { amount: value }) }));
    block.append(table(rows, name.replace(/_/g, " ")));
  }
  const rows = data.rows ?? [];
  if (rows.length) {
    const count = data.row_count ?? rows.length;
    block.append(table(rows, `${count} transaction${count === 1 ? "" : "s"}` +
      (count > rows.length ? ` (first ${rows.length} shown)` : "")));
  }
  return block;
}

function table(rows, caption) {
  const columns = Object.keys(rows[0] ?? {});
  return el("div", { class: "table-scroll" }, el("table", { class: "data-table" },
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, ...columns.map((name) => el("th", { scope: "col" }, name)))),
    el("tbody", {}, ...rows.map((row) => el("tr", {}, ...columns.map((name) =>
      el("td", { class: typeof row[name] === "number" ? "number" : null }, cell(row[name], name))))))));
}

// A documents answer: each source with its snippet and score; a click opens the whole passage.
function sourcesBlock(sources, openPassage) {
  if (!sources.length) return el("p", { class: "hint" }, "No passage of your documents matched this question.");
  return el("section", { class: "sources", "aria-label": "Sources" },
    el("p", { class: "badge" }, "From your documents"),
    el("ol", {}, ...sources.map((source) => el("li", {},
      el("button", { type: "button", class: "source", onclick: () => openPassage(source) },
        el("span", { class: "source-name" }, `[${source.id}] ${source.document}${source.page ? `, page ${source.page}` : ""}`,
          source.source && source.source !== source.document ? el("span", { class: "source-file" }, ` · ${source.source.split("/").pop()}`) : null),
        el("span", { class: "score", title: "similarity of the question and the passage" }, `score ${Number(source.score).toFixed(2)}`),
        el("span", { class: "snippet" }, source.snippet))))));
}

function toolCallsBlock(calls) {
  return el("section", { class: "tool-calls", "aria-label": "Tool calls" }, ...calls.map((call) =>
    el("details", { class: "tool-call" }, el("summary", {}, `Tool call: ${call.function?.name ?? "?"}`),
      el("pre", {}, el("code", {}, call.function?.arguments ?? "")))));
}

function statsLine(stats, fromData) {
  const parts = [];
  if (fromData) parts.push(`answered from your data in ${stats.ttft?.toFixed(2) ?? "?"} s`);
  else if (stats.completionTokens !== undefined) parts.push(`${stats.completionTokens} tokens`);
  if (fromData) return el("p", { class: "stats", "aria-label": "Answer statistics" }, parts.join(" · "));
  if (stats.ttft !== undefined) parts.push(`first token ${stats.ttft.toFixed(2)} s`);
  if (stats.tokensPerSecond) parts.push(`${stats.tokensPerSecond.toFixed(1)} tok/s`);
  if (stats.stopped) parts.push("stopped");
  return el("p", { class: "stats", "aria-label": "Answer statistics" }, parts.join(" · "));
}

// handlers: { onEdit(index, text), onRegenerate(), onRetry(), openPassage(source) }; last: is it the last message.
export function messageElement(message, index, { last, busy, model, handlers }) {
  const isUser = message.role === "user";
  const article = el("article", { class: `message ${isUser ? "user" : "assistant"}`, "data-index": index,
    "aria-label": isUser ? "Your message" : "Answer" });
  article.append(el("header", { class: "who" }, isUser ? "You" : (message.model ?? model ?? "labs")));
  if (message.reasoning) {
    const thinking = el("details", { class: "thinking" }, el("summary", {}, message.streaming && !message.content ? "Thinking…" : "Thinking"));
    const body = el("div", { class: "thinking-text" });
    body.textContent = message.reasoning;
    thinking.append(body);
    article.append(thinking);
  }
  const content = el("div", { class: "content" });
  if (isUser) content.textContent = message.content;
  else renderMarkdown(content, message.content);
  if (message.streaming && !message.content && !message.reasoning) content.append(el("span", { class: "typing", "aria-label": "Waiting for the answer" }, "…"));
  article.append(content);
  if (message.toolCalls?.length) article.append(toolCallsBlock(message.toolCalls));
  if (message.rag?.source === "transactions") article.append(dataBlock(message.rag));
  if (message.rag?.source === "documents") article.append(sourcesBlock(message.rag.sources ?? [], handlers.openPassage));
  if (message.error) {
    article.append(el("div", { class: "error-box", role: "alert" }, el("p", {}, message.error),
      last && !busy ? el("button", { type: "button", onclick: handlers.onRetry }, "Try again") : null));
  }
  if (message.stats) article.append(statsLine(message.stats, message.rag?.source === "transactions"));
  if (!busy) article.append(actions(message, index, last, content, handlers));
  return article;
}

function actions(message, index, last, content, handlers) {
  const bar = el("div", { class: "actions" });
  if (message.role === "user") {
    bar.append(el("button", { type: "button", onclick: () => editInPlace(message, index, content, bar, handlers) }, "Edit"));
  } else {
    bar.append(el("button", { type: "button", onclick: () => navigator.clipboard?.writeText(message.content ?? "") }, "Copy"));
    if (last) bar.append(el("button", { type: "button", onclick: handlers.onRegenerate }, "Regenerate"));
  }
  return bar;
}

function editInPlace(message, index, content, bar, handlers) {
  const box = el("textarea", { class: "edit-box", "aria-label": "Edit your message", rows: 3 });
  box.value = message.content;
  const save = el("button", { type: "button", class: "primary", onclick: () => handlers.onEdit(index, box.value) }, "Send");
  const cancel = el("button", { type: "button", onclick: () => handlers.onCancelEdit() }, "Cancel");
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); save.click(); }
    if (event.key === "Escape") { event.preventDefault(); cancel.click(); }
  });
  content.replaceWith(box);
  bar.replaceChildren(save, cancel);
  box.focus();
}

export { el };
