// The labs page: wires the conversation list, the chat, the settings and the dialogs together.

import { Api } from "./api.js";
import { Documents } from "./documents.js";
import { el, messageElement } from "./messages.js";
import { StatusView } from "./status.js";
import { Conversations, loadSettings, saveSettings, titleFrom } from "./store.js";

const $ = (id) => document.getElementById(id);

const conversations = new Conversations();
const settings = loadSettings();
const api = new Api(askForKey);
let current = conversations.sorted()[0] ?? null;
let running = null; // { controller, message } while an answer streams
let defaultModel = null;

// ------------------------------------------------------------------ the API key prompt

let keyPrompt = null;
function askForKey(wrong) {
  if (keyPrompt) return keyPrompt;
  const dialog = $("key-dialog");
  $("key-error").textContent = wrong ? "That key was not accepted by the server. Check it and try again." : "";
  $("api-key").value = "";
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      keyPrompt = null;
      // Chrome gives focus back to the composer without a caret: re-focus it so typing works at once
      $("prompt").blur();
      setTimeout(() => $("prompt").focus(), 0);
      resolve(dialog.returnValue === "ok" ? $("api-key").value.trim() || null : null);
    }, { once: true });
  });
  dialog.returnValue = "";
  dialog.showModal();
  $("api-key").focus();
  return keyPrompt;
}

// ------------------------------------------------------------------ notices

function notify(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

// ------------------------------------------------------------------ the conversation list

function renderList() {
  const list = $("conversations");
  list.replaceChildren(...conversations.sorted().map((conversation) => {
    const item = el("li", { class: conversation === current ? "active" : null, "data-id": conversation.id });
    const open = el("button", { type: "button", class: "open-chat", "aria-current": conversation === current ? "page" : null,
      onclick: () => openConversation(conversation) }, conversation.title);
    const rename = el("button", { type: "button", class: "icon small", "aria-label": `Rename ${conversation.title}`,
      title: "Rename", onclick: () => startRename(item, conversation) }, "✎");
    const remove = el("button", { type: "button", class: "icon small", "aria-label": `Delete ${conversation.title}`,
      title: "Delete", onclick: () => deleteConversation(conversation) }, "✕");
    item.append(open, rename, remove);
    return item;
  }));
}

function startRename(item, conversation) {
  const input = el("input", { type: "text", class: "rename", "aria-label": "New name" });
  input.value = conversation.title;
  const finish = (save) => {
    if (save) conversations.rename(conversation.id, input.value);
    renderList();
    renderTitle();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") { event.stopPropagation(); finish(false); }
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function deleteConversation(conversation) {
  if (!confirm(`Delete the conversation “${conversation.title}”?`)) return;
  if (running && conversation === current) stop();
  conversations.remove(conversation.id);
  if (conversation === current) current = conversations.sorted()[0] ?? null;
  render();
}

function openConversation(conversation) {
  if (running) stop();
  current = conversation;
  document.body.classList.remove("sidebar-open");
  render();
  $("prompt").focus();
}

function newChat() {
  if (running) stop();
  current = null;
  document.body.classList.remove("sidebar-open");
  render();
  $("prompt").focus();
}

// ------------------------------------------------------------------ the chat

function renderTitle() {
  $("chat-title").textContent = current?.title ?? "New chat";
  document.title = current ? `${current.title} · labs` : "labs";
}

const handlers = {
  onEdit: (index, text) => resend(index, text),
  onCancelEdit: () => renderMessages(),
  onRegenerate: () => regenerate(),
  onRetry: () => regenerate(),
  openPassage: (source) => {
    $("passage-title").textContent = `[${source.id}] ${source.document}`;
    $("passage-where").textContent = `${source.source}${source.page ? `, page ${source.page}` : ""}, passage ${source.chunk + 1}, score ${Number(source.score).toFixed(2)}`;
    $("passage-text").textContent = source.text ?? source.snippet;
    $("passage-dialog").showModal();
  },
};

function renderMessages() {
  const box = $("messages");
  const messages = current?.messages ?? [];
  $("empty").hidden = messages.length > 0;
  box.replaceChildren($("empty"), ...messages.map((message, index) =>
    messageElement(message, index, { last: index === messages.length - 1, busy: Boolean(running), model: selectedModel(), handlers })));
  box.scrollTop = box.scrollHeight;
}

let pendingFrame = 0;
function renderStreaming() {
  if (pendingFrame) return;
  pendingFrame = requestAnimationFrame(() => {
    pendingFrame = 0;
    if (!running || running.conversation !== current) return;
    const box = $("messages");
    const index = current.messages.indexOf(running.message);
    const old = box.querySelector(`article[data-index="${index}"]`);
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    const fresh = messageElement(running.message, index, { last: true, busy: true, model: selectedModel(), handlers });
    if (old) old.replaceWith(fresh);
    else box.append(fresh);
    if (nearBottom) box.scrollTop = box.scrollHeight;
  });
}

function render() {
  renderList();
  renderTitle();
  renderMessages();
  setBusy(Boolean(running));
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("messages").setAttribute("aria-busy", busy ? "true" : "false");
}

function selectedModel() {
  return $("model").value || defaultModel;
}

function requestFor(conversation) {
  const messages = [];
  if (settings.systemPrompt.trim()) messages.push({ role: "system", content: settings.systemPrompt.trim() });
  for (const message of conversation.messages.slice(0, -1)) {
    if (message.role === "assistant" && !message.content) continue; // failed or stopped before any text
    messages.push({ role: message.role, content: message.content });
  }
  const request = { messages, stream_options: { include_usage: true } };
  if ($("model").value) request.model = $("model").value;
  if (settings.temperature !== "") request.temperature = Number(settings.temperature);
  if (settings.maxTokens !== "") request.max_tokens = Number(settings.maxTokens);
  if (settings.useDocs) request.use_rag = true;
  return request;
}

function send(text) {
  if (running || !text.trim()) return;
  if (!current) {
    current = conversations.create();
    current.title = titleFrom(text);
  }
  current.messages.push({ role: "user", content: text });
  $("prompt").value = "";
  autosize();
  answer(current);
}

function regenerate() {
  if (running || !current) return;
  if (current.messages.at(-1)?.role === "assistant") current.messages.pop();
  answer(current);
}

function resend(index, text) {
  if (running || !current || !text.trim()) return;
  current.messages = current.messages.slice(0, index);
  current.messages.push({ role: "user", content: text });
  answer(current);
}

async function answer(conversation) {
  const message = { role: "assistant", content: "", model: selectedModel(), streaming: true };
  conversation.messages.push(message);
  conversations.touch(conversation);
  const controller = new AbortController();
  running = { controller, message, conversation };
  render();
  const started = performance.now();
  let firstToken = null;
  const calls = [];
  try {
    await api.streamChat(requestFor(conversation), {
      signal: controller.signal,
      onChunk: (chunk) => {
        if (chunk.model) message.model = chunk.model;
        if (chunk.rag) message.rag = chunk.rag;
        if (chunk.usage) message.usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta ?? {};
        if (delta.reasoning_content) message.reasoning = (message.reasoning ?? "") + delta.reasoning_content;
        if (delta.content) {
          firstToken ??= performance.now();
          message.content += delta.content;
        }
        for (const part of delta.tool_calls ?? []) {
          const call = (calls[part.index] ??= { id: part.id, type: "function", function: { name: "", arguments: "" } });
          if (part.function?.name) call.function.name = part.function.name;
          if (part.function?.arguments) call.function.arguments += part.function.arguments;
          message.toolCalls = calls;
        }
        renderStreaming();
      },
    });
  } catch (error) {
    if (error.name === "AbortError") message.stopped = true;
    else message.error = error.advice ?? String(error);
  } finally {
    const ended = performance.now();
    const tokens = message.usage?.completion_tokens;
    message.stats = {
      completionTokens: tokens,
      ttft: firstToken === null ? undefined : (firstToken - started) / 1000,
      tokensPerSecond: tokens > 1 && firstToken !== null && ended > firstToken ? (tokens - 1) / ((ended - firstToken) / 1000) : undefined,
      stopped: Boolean(message.stopped),
    };
    if (!message.error && !message.content && !message.toolCalls && !message.stopped) message.error = "The model gave an empty answer.";
    delete message.streaming;
    delete message.usage;
    running = null;
    conversations.touch(conversation);
    render();
  }
}

function stop() {
  running?.controller.abort();
}

// ------------------------------------------------------------------ composer, keys, settings

function autosize() {
  const box = $("prompt");
  box.style.height = "auto";
  box.style.height = `${Math.min(box.scrollHeight, 240)}px`;
}

function wireComposer() {
  const box = $("prompt");
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send(box.value);
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(box.value);
    }
  });
  box.addEventListener("input", autosize);
  $("stop").addEventListener("click", stop);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && running && !document.querySelector("dialog[open]")) {
      event.preventDefault();
      stop();
    }
    if (event.key.toLowerCase() === "o" && event.shiftKey && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      newChat();
    }
  });
}

function wireSettings() {
  $("system-prompt").value = settings.systemPrompt;
  $("temperature").value = settings.temperature;
  $("max-tokens").value = settings.maxTokens;
  $("use-docs").checked = settings.useDocs;
  const update = () => {
    settings.systemPrompt = $("system-prompt").value;
    settings.temperature = $("temperature").value;
    settings.maxTokens = $("max-tokens").value;
    settings.useDocs = $("use-docs").checked;
    settings.model = $("model").value;
    saveSettings(settings);
  };
  for (const id of ["system-prompt", "temperature", "max-tokens", "use-docs", "model"]) $(id).addEventListener("change", update);
  $("open-settings").addEventListener("click", () => $("settings-dialog").showModal());
  $("forget-key").addEventListener("click", () => {
    api.key = null;
    notify("The API key is forgotten; the page asks for it at the next request that needs one.");
  });
}

async function loadModels() {
  try {
    const [{ data }, status] = await Promise.all([api.json("/v1/models"), api.json("/v1/status")]);
    defaultModel = status.default_model;
    const chatModels = data.filter((card) => card.type !== "embedding");
    $("model").replaceChildren(...chatModels.map((card) =>
      el("option", { value: card.id }, card.id === defaultModel ? `${card.id} (default)` : card.id)));
    const wanted = chatModels.some((card) => card.id === settings.model) ? settings.model : defaultModel;
    if (wanted) $("model").value = wanted;
    notify("");
  } catch (error) {
    notify(`Could not reach the server's models: ${error.advice ?? error.message}`);
  }
}

function wireConversationFiles() {
  $("new-chat").addEventListener("click", newChat);
  $("export-chats").addEventListener("click", () => {
    const link = el("a", { href: URL.createObjectURL(new Blob([conversations.exportJson()], { type: "application/json" })),
      download: `labs-conversations-${new Date().toISOString().slice(0, 10)}.json` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });
  $("import-chats").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    try {
      const added = conversations.importJson(await file.text());
      notify(`Imported ${added} conversation${added === 1 ? "" : "s"}.`);
      render();
    } catch (error) {
      notify(`Could not import ${file.name}: ${error.message}`);
    }
  });
}

function wireDialogs() {
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  const documents = new Documents(api, { dialog: $("documents-dialog"), list: $("documents-list"), status: $("upload-status"),
    picker: $("document-files"), overlay: $("drop-overlay") });
  $("open-documents").addEventListener("click", () => documents.open());
  const status = new StatusView(api, { dialog: $("status-dialog"), body: $("status-body") });
  $("open-status").addEventListener("click", () => status.open());
  $("open-sidebar").addEventListener("click", () => document.body.classList.add("sidebar-open"));
  $("close-sidebar").addEventListener("click", () => document.body.classList.remove("sidebar-open"));
}

window.addEventListener("storage", (event) => {  // another tab changed the conversations
  if (event.key === "labs.conversations" && !running) {
    const id = current?.id;
    conversations.items = new Conversations().items;
    current = id ? conversations.get(id) : null;
    render();
  }
});

wireComposer();
wireSettings();
wireConversationFiles();
wireDialogs();
render();
loadModels();
$("prompt").focus();
