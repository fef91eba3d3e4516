// The document index from the page: add files (picked or dropped anywhere), list them, delete one.

import { el } from "./messages.js";

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export class Documents {
  constructor(api, { dialog, list, status, picker, overlay, showError }) {
    Object.assign(this, { api, dialog, list, status, picker, overlay, showError });
    picker.addEventListener("change", () => {
      this.upload([...picker.files]);
      picker.value = "";
    });
    this.#acceptDrops();
  }

  async open() {
    if (!this.dialog.open) this.dialog.showModal();
    await this.refresh();
  }

  async refresh() {
    try {
      const { data } = await this.api.json("/v1/rag/documents");
      this.render(data);
    } catch (error) {
      this.status.textContent = `Could not list the documents: ${error.advice ?? error.message}`;
    }
  }

  render(documents) {
    if (!documents.length) {
      this.list.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "hint" }, "No documents yet.")));
      return;
    }
    this.list.replaceChildren(...documents.map((doc) => el("tr", { "data-document": doc.document_id },
      el("td", { class: "doc-name", title: doc.title || doc.source }, el("span", {}, doc.source),
        doc.title && doc.title !== doc.source ? el("span", { class: "hint doc-title" }, doc.title) : null),
      el("td", { class: "number" }, String(doc.chunks)),
      el("td", {}, doc.ingested_at ? when.format(new Date(doc.ingested_at)) : ""),
      el("td", {}, el("button", { type: "button", class: "danger small", "aria-label": `Delete ${doc.title || doc.source}`,
        onclick: () => this.remove(doc) }, "Delete")))));
  }

  async upload(files) {
    if (!files.length) return;
    await this.open();
    const form = new FormData();
    for (const file of files) form.append("file", file, file.name);
    this.status.textContent = `Adding ${files.map((f) => f.name).join(", ")}… (the first upload also loads the embedding model)`;
    try {
      const { files: results } = await this.api.json("/v1/rag/documents", { method: "POST", body: form });
      this.status.textContent = results.map((r) => r.status === "failed" ? `${r.source}: failed (${r.message})`
        : `${r.source}: ${r.status}, ${r.chunks} chunk${r.chunks === 1 ? "" : "s"}`).join("; ");
    } catch (error) {
      this.status.textContent = `Could not add the files: ${error.advice ?? error.message}`;
    }
    await this.refresh();
  }

  async remove(doc) {
    if (!confirm(`Delete “${doc.title || doc.source}” from your documents?`)) return;
    try {
      await this.api.fetch(`/v1/rag/documents/${encodeURIComponent(doc.document_id)}`, { method: "DELETE" });
      this.status.textContent = `Deleted ${doc.title || doc.source}.`;
    } catch (error) {
      this.status.textContent = `Could not delete it: ${error.advice ?? error.message}`;
    }
    await this.refresh();
  }

  #acceptDrops() {
    let depth = 0;
    const hasFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
    window.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      this.overlay.hidden = false;
    });
    window.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) this.overlay.hidden = true;
    });
    window.addEventListener("dragover", (event) => {
      if (hasFiles(event)) event.preventDefault();
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      this.overlay.hidden = true;
      this.upload([...event.dataTransfer.files]);
    });
  }
}
