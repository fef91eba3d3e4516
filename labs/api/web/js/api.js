// Talking to labs-api from the page: the same HTTP API every other client uses.
// The API key (when the server wants one) is asked for once and kept in sessionStorage.

const KEY_STORAGE = "labs.apiKey";

export class ApiError extends Error {
  constructor(status, message, { code = null, retryAfter = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  // What the user should read: what happened and what to do about it.
  get advice() {
    if (this.status === 401) return "The server did not accept the API key. Enter the key again (Settings → Forget the API key).";
    if (this.status === 503 || this.status === 429) {
      const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : " Try again in a moment.";
      return `The server is busy: ${this.message}.${wait}`;
    }
    if (this.status === 0) return `The server could not be reached (${this.message}). Is labs-api still running?`;
    if (this.status >= 500) return `The server failed: ${this.message}`;
    return this.message;
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    const error = body.error ?? body.detail ?? body;
    message = typeof error === "string" ? error : (error.message ?? JSON.stringify(error));
    code = error.code ?? null;
  } catch {
    // not JSON: keep the status line
  }
  const retry = Number(response.headers.get("Retry-After"));
  return new ApiError(response.status, message, { code, retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null });
}

export class Api {
  // askKey(wrong: bool) -> Promise<string|null>: shows the key prompt; null when the user gives up.
  constructor(askKey) {
    this.askKey = askKey;
  }

  get key() { return sessionStorage.getItem(KEY_STORAGE); }
  set key(value) {
    if (value) sessionStorage.setItem(KEY_STORAGE, value);
    else sessionStorage.removeItem(KEY_STORAGE);
  }

  async fetch(path, { method = "GET", json, body, signal } = {}) {
    for (;;) {
      const headers = {};
      if (this.key) headers.Authorization = `Bearer ${this.key}`;
      if (json !== undefined) headers["Content-Type"] = "application/json";
      let response;
      try {
        response = await fetch(path, { method, headers, signal, body: json !== undefined ? JSON.stringify(json) : body });
      } catch (error) {
        if (error.name === "AbortError") throw error;
        throw new ApiError(0, error.message);
      }
      if (response.status === 401) {
        const wrong = Boolean(this.key);
        const key = await this.askKey(wrong);
        if (!key) throw await errorOf(response);
        this.key = key;
        continue;
      }
      if (!response.ok) throw await errorOf(response);
      return response;
    }
  }

  async json(path, options) {
    return (await this.fetch(path, options)).json();
  }

  // POST a streaming chat completion; calls onChunk(parsed) for each `data:` event.
  async streamChat(request, { signal, onChunk }) {
    const response = await this.fetch("/v1/chat/completions", { method: "POST", json: { ...request, stream: true }, signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const parsed = JSON.parse(data);
          if (parsed.error) {
            const status = parsed.error.type === "invalid_request_error" ? 400 : 500;
            throw new ApiError(status, parsed.error.message, { code: parsed.error.code });
          }
          onChunk(parsed);
        }
      }
    }
  }
}
