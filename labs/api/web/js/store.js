// Past conversations, kept in this browser (localStorage): nothing about them is stored on the server.
//
// A conversation: { id, title, created, updated, messages: [{ role, content, reasoning?, toolCalls?,
// rag?, stats?, error? }] }. Export and import use the same shape, wrapped as { labs_conversations: [...] }.

const STORAGE = "labs.conversations";
const SETTINGS = "labs.settings";

function newId() {
  return `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
}

export function titleFrom(text) {
  const line = text.trim().split("\n")[0];
  return line.length > 60 ? `${line.slice(0, 57)}…` : line || "New chat";
}

export class Conversations {
  constructor() {
    this.items = this.#read();
  }

  #read() {
    try {
      const items = JSON.parse(localStorage.getItem(STORAGE) ?? "[]");
      return Array.isArray(items) ? items.filter(valid) : [];
    } catch {
      return [];
    }
  }

  save() {
    localStorage.setItem(STORAGE, JSON.stringify(this.items));
  }

  sorted() {
    return [...this.items].sort((a, b) => b.updated - a.updated);
  }

  get(id) {
    return this.items.find((item) => item.id === id) ?? null;
  }

  create() {
    const now = Date.now();
    const conversation = { id: newId(), title: "New chat", created: now, updated: now, messages: [] };
    this.items.push(conversation);
    return conversation;
  }

  touch(conversation) {
    conversation.updated = Date.now();
    this.save();
  }

  rename(id, title) {
    const conversation = this.get(id);
    if (conversation && title.trim()) {
      conversation.title = title.trim();
      this.touch(conversation);
    }
  }

  remove(id) {
    this.items = this.items.filter((item) => item.id !== id);
    this.save();
  }

  exportJson() {
    return JSON.stringify({ labs_conversations: this.items }, null, 2);
  }

  // Adds the conversations of an exported file; returns how many were added (existing ids are kept).
  importJson(text) {
    const parsed = JSON.parse(text);
    const incoming = Array.isArray(parsed) ? parsed : parsed.labs_conversations;
    if (!Array.isArray(incoming)) throw new Error("not a labs conversations file (no labs_conversations list)");
    const known = new Set(this.items.map((item) => item.id));
    const added = incoming.filter((item) => valid(item) && !known.has(item.id));
    for (const item of added) {
      item.updated ??= Date.now();
      item.created ??= item.updated;
    }
    this.items.push(...added);
    this.save();
    return added.length;
  }
}

function valid(item) {
  return item && typeof item.id === "string" && Array.isArray(item.messages) && typeof item.title === "string";
}

export function loadSettings() {
  try {
    return { systemPrompt: "", temperature: "", maxTokens: "", model: "", useDocs: false,
      ...JSON.parse(localStorage.getItem(SETTINGS) ?? "{}") };
  } catch {
    return { systemPrompt: "", temperature: "", maxTokens: "", model: "", useDocs: false };
  }
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS, JSON.stringify(settings));
}
