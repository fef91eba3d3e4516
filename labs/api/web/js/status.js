// The status view: loaded models, requests waiting and running, recent speed (GET /v1/status).
// Throughput is the change of the engine's generated-token counter between two readings.

import { el } from "./messages.js";

export class StatusView {
  constructor(api, { dialog, body }) {
    Object.assign(this, { api, dialog, body });
    this.timer = null;
    this.previous = new Map();  // model id -> { tokens, at }
    dialog.addEventListener("close", () => this.stop());
  }

  open() {
    if (!this.dialog.open) this.dialog.showModal();
    this.poll();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async poll() {
    try {
      this.render(await this.api.json("/v1/status"));
    } catch (error) {
      this.body.replaceChildren(el("p", { class: "error-text" }, `No status: ${error.advice ?? error.message}`));
    }
    if (this.dialog.open) this.timer = setTimeout(() => this.poll(), 2000);
  }

  throughput(model) {
    const now = performance.now();
    const before = this.previous.get(model.id);
    this.previous.set(model.id, { tokens: model.generation_tokens_total, at: now });
    if (!before || now <= before.at) return null;
    return ((model.generation_tokens_total - before.tokens) * 1000) / (now - before.at);
  }

  render(status) {
    const rows = status.models.map((model) => {
      const rate = this.throughput(model);
      return el("tr", { "data-model": model.id },
        el("th", { scope: "row" }, model.id + (model.id === status.default_model ? " (default)" : "")),
        el("td", { class: "number" }, String(model.waiting ?? "–")),
        el("td", { class: "number" }, String(model.running ?? "–")),
        el("td", { class: "number" }, model.kv_cache_usage === undefined ? "–" : `${Math.round(model.kv_cache_usage * 100)}%`),
        el("td", { class: "number" }, rate === null ? "…" : rate.toFixed(1)),
        el("td", { class: "number" }, model.tokens_per_second_per_request ? model.tokens_per_second_per_request.toFixed(1) : "–"),
        el("td", { class: "number" }, model.time_to_first_token_p50 ? `${model.time_to_first_token_p50.toFixed(2)} s` : "–"),
        el("td", { class: "number" }, String(model.generation_tokens_total ?? "–")));
    });
    const table = el("table", { class: "status-table" },
      el("caption", {}, `labs ${status.version}: models in memory`),
      el("thead", {}, el("tr", {}, ...["Model", "Waiting", "Running", "KV cache", "tok/s now", "tok/s per request",
        "First token (p50)", "Tokens generated"].map((name) => el("th", { scope: "col" }, name)))),
      el("tbody", {}, ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "hint" },
        "No model in memory yet: the first question loads the default model."))])));
    const embeddings = el("p", { class: "hint" },
      `Embedding model: ${status.embeddings.id} (${status.embeddings.loaded ? "loaded" : "not loaded yet"})`);
    this.body.replaceChildren(el("div", { class: "table-scroll" }, table), embeddings);
  }
}
