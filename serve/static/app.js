// Ouro's chat page: talk to the bot through the OpenAI API, correct its answers in place and
// rate them (thumbs up or down).
// Plain JavaScript, no dependencies. Everything shown on the page is set with textContent,
// never innerHTML, so user and model text is always displayed as text.
"use strict";

const API_KEY_STORAGE = "ouro.apiKey";
const DEFAULT_MODEL = "ouro";
// A completion id that names the side of a canary rollout it was assigned to (ouro/rollout.py).
const ASSIGNED_ID = /^chatcmpl-[0-9a-f]{32}\.(v[1-9][0-9]*|base)$/;
const BASE_MODEL = "ouro-base";

/** An HTTP error in OpenAI's envelope: {"error": {"message", "type", "param", "code"}}. */
class ApiError extends Error {
  constructor(status, message, type = null, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
  }
}

/** Turns a failed response into an ApiError, whatever its body looks like. */
async function readError(response) {
  let message = `${response.status} ${response.statusText}`.trim();
  let type = null;
  let code = null;
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object" && body.error !== null) {
      message = body.error.message || message;
      type = body.error.type ?? null;
      code = body.error.code ?? null;
    } else if (body && typeof body.detail === "string") {
      message = body.detail;
    }
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    if (text.trim()) message = `${message}: ${text.trim().slice(0, 200)}`;
  }
  return new ApiError(response.status, message, type, code);
}

/**
 * Yields the data of each server-sent event in a fetch body (a POST cannot use EventSource).
 * Follows the SSE format: "data:" lines joined by newlines, a blank line ends an event,
 * lines starting with ":" are comments (keep-alives).
 */
async function* readServerSentEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) !== -1) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon === -1 ? line : line.slice(0, colon);
          let fieldValue = colon === -1 ? "" : line.slice(colon + 1);
          if (fieldValue.startsWith(" ")) fieldValue = fieldValue.slice(1);
          if (field === "data") data.push(fieldValue);
        }
      }
    }
    if (buffer.startsWith("data:")) data.push(buffer.slice(5).replace(/^ /, ""));
    if (data.length) yield data.join("\n");
  } finally {
    reader.releaseLock();
  }
}

/** The inline panel that asks for an API key when the server answers 401. */
class KeyPrompt {
  constructor(doc, onKeyChanged) {
    this.panel = doc.getElementById("api-key-panel");
    this.form = doc.getElementById("api-key-form");
    this.input = doc.getElementById("api-key-input");
    this.reason = doc.getElementById("api-key-reason");
    this.forgetButton = doc.getElementById("api-key-forget");
    this.onKeyChanged = onKeyChanged;
    this.waiting = [];
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    doc.getElementById("api-key-cancel").addEventListener("click", () => this.cancel());
    this.forgetButton.addEventListener("click", () => this.forget());
    this.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.cancel();
    });
  }

  get key() {
    return sessionStorage.getItem(API_KEY_STORAGE) || "";
  }

  /** Shows the panel; `reason` says why (e.g. the server's 401 message). */
  open(reason) {
    this.reason.textContent = reason || "Enter the API key for this server.";
    this.forgetButton.hidden = !this.key;
    this.input.value = "";
    this.panel.hidden = false;
    this.input.focus();
  }

  /** Resolves with the key the user enters; rejects if they cancel. */
  ask(reason) {
    this.open(reason);
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  submit() {
    const key = this.input.value.trim();
    if (!key) return;
    sessionStorage.setItem(API_KEY_STORAGE, key);
    this.close();
    const waiting = this.waiting.splice(0);
    waiting.forEach(({ resolve }) => resolve(key));
    if (!waiting.length) this.onKeyChanged();
  }

  forget() {
    sessionStorage.removeItem(API_KEY_STORAGE);
    this.cancel();
  }

  cancel() {
    this.close();
    const error = new ApiError(401, "This server needs an API key; none was given.");
    this.waiting.splice(0).forEach(({ reject }) => reject(error));
  }

  close() {
    this.panel.hidden = true;
    this.input.value = "";
  }
}

/** fetch() for the API: adds the stored key, and on 401 asks for a key and retries. */
class ApiClient {
  constructor(keyPrompt) {
    this.keyPrompt = keyPrompt;
  }

  async fetch(path, init = {}) {
    // Relative to the page, so the app also works behind a path prefix.
    const url = new URL(path, document.baseURI);
    for (;;) {
      const headers = new Headers(init.headers);
      const key = this.keyPrompt.key;
      if (key) headers.set("Authorization", `Bearer ${key}`);
      const response = await fetch(url, { ...init, headers });
      if (response.status !== 401) return response;
      const error = await readError(response);
      const reason = key
        ? `The server refused the key: ${error.message}`
        : `This server needs an API key: ${error.message}`;
      await this.keyPrompt.ask(reason);
    }
  }

  async json(path, init = {}) {
    const response = await this.fetch(path, init);
    if (!response.ok) throw await readError(response);
    return response.json();
  }
}

let elementCounter = 0;

/** One message on the page; assistant messages carry the correction form. */
class MessageView {
  constructor(template, role, text) {
    this.element = template.content.firstElementChild.cloneNode(true);
    this.role = role;
    this.element.classList.add(`message-${role}`);
    this.element.dataset.role = role;
    this.part("message-author").textContent = role === "user" ? "You" : "Ouro";
    this.textElement = this.part("message-text");
    this.textElement.textContent = text;
    this.versionElement = this.part("message-version");
    this.versionElement.hidden = true;
    this.routeElement = this.part("message-route");
    if (role !== "assistant") {
      // Only answers can be corrected or rated.
      for (const name of ["message-actions", "feedback-form", "feedback-result"]) {
        this.part(name).remove();
      }
      return;
    }
    // Labels need ids that are unique on the page.
    const id = `m${++elementCounter}`;
    this.bindLabel("feedback-correction-label", "feedback-correction", `${id}-correction`);
    this.bindLabel("feedback-reason-label", "feedback-reason", `${id}-reason`);
  }

  part(className) {
    return this.element.querySelector(`.${className}`);
  }

  bindLabel(labelClass, controlClass, id) {
    this.part(controlClass).id = id;
    this.part(labelClass).htmlFor = id;
  }

  get text() {
    return this.textElement.textContent;
  }

  append(text) {
    this.textElement.textContent += text;
  }

  setBusy(busy) {
    // Screen readers wait for aria-busy="false" before reading the finished reply.
    this.element.setAttribute("aria-busy", busy ? "true" : "false");
    this.element.classList.toggle("message-streaming", busy);
  }

  setVersion(version) {
    if (!version) return;
    this.versionElement.textContent = version;
    this.versionElement.hidden = false;
  }

  /**
   * The badge under an answer saying how the router chose who answered, from the response's
   * x-ouro-model-version, x-ouro-route and x-ouro-route-similarity headers.
   */
  setRoute(version, route, similarity) {
    const badge = routeBadge(version, route, similarity);
    this.routeElement.hidden = !badge;
    if (!badge) return;
    this.routeElement.textContent = badge.text;
    this.routeElement.title = badge.title;
    this.routeElement.classList.toggle("route-correction", badge.correction);
  }

  showError(message) {
    const error = this.part("message-error");
    error.textContent = message;
    error.hidden = false;
    this.element.classList.add("message-failed");
  }
}

/** What the route badge says ({text, title, correction}), or null for nothing special. */
function routeBadge(version, route, similarity) {
  const value = Number.parseFloat(similarity);
  const known = Number.isFinite(value);
  const nearest = known ? `; the nearest correction's similarity is ${value.toFixed(2)}` : "";
  if (route === "match" && known) {
    return {
      text: `${version} · correction, similarity ${value.toFixed(2)}`,
      title: "Answered by the version that learned a correction about this question",
      correction: true,
    };
  }
  if (route === "forced") {
    return {
      text: `${version} · unrouted (forced)`,
      title: `An admin asked for this version whatever its corrections are about${nearest}`,
      correction: false,
    };
  }
  if (version === BASE_MODEL) {
    return {
      text: "base model",
      title:
        route === "base"
          ? "The base model was asked for"
          : `No correction is about this question, so the base model answered${nearest}`,
      correction: false,
    };
  }
  return null;
}

/** The "Spotted a mistake?" control of one answer: an inline editor that posts /v1/feedback. */
class CorrectionForm {
  constructor(view, api, answer) {
    this.view = view;
    this.api = api;
    this.answer = answer; // {messages, completion, completionId, version}
    this.toggle = view.part("feedback-toggle");
    this.form = view.part("feedback-form");
    this.correction = view.part("feedback-correction");
    this.reason = view.part("feedback-reason");
    this.submitButton = view.part("feedback-submit");
    this.result = view.part("feedback-result");

    view.part("message-actions").hidden = false;
    this.toggle.addEventListener("click", () => (this.form.hidden ? this.open() : this.close()));
    view.part("feedback-cancel").addEventListener("click", () => this.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.form.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.close();
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
  }

  open() {
    this.correction.value = this.answer.completion;
    this.form.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    this.correction.focus();
    this.correction.select();
  }

  close() {
    this.form.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
    this.toggle.focus();
  }

  say(message, ok) {
    this.result.textContent = message;
    this.result.hidden = false;
    this.result.classList.toggle("feedback-ok", ok);
    this.result.classList.toggle("feedback-error", !ok);
  }

  async submit() {
    const correction = this.correction.value.trim();
    if (!correction) {
      this.say("Type the answer Ouro should have given.", false);
      return;
    }
    if (correction === this.answer.completion.trim()) {
      this.say("That is the same as the answer: change it to what Ouro should have said.", false);
      return;
    }
    const body = {
      messages: this.answer.messages,
      completion: this.answer.completion,
      correction,
      model: this.answer.version,
    };
    if (this.answer.completionId) body.completion_id = this.answer.completionId;
    const reason = this.reason.value.trim();
    if (reason) body.reason = reason;

    this.submitButton.disabled = true;
    try {
      const record = await this.api.json("v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      this.form.hidden = true;
      this.toggle.setAttribute("aria-expanded", "false");
      this.toggle.textContent = "Correct it again";
      this.say(`Thanks! Your correction was saved (id ${record.id}).`, true);
    } catch (error) {
      this.say(`Could not save the correction: ${error.message}`, false);
    } finally {
      this.submitButton.disabled = false;
    }
  }
}

/** What a rating is called on the page. */
const RATING_WORDS = { up: "a good answer", down: "a bad answer" };

/**
 * The thumbs up / thumbs down of one answer: each click posts a rating to /v1/feedback (a
 * signal for rollout, never a training row). One rating per answer: the pressed button says
 * which; pressing the other one changes it (a new record, the newest counts).
 */
class RatingButtons {
  constructor(view, api, answer) {
    this.api = api;
    this.answer = answer; // {messages, completion, completionId, version}
    this.buttons = [...view.element.querySelectorAll(".rating-button")];
    this.result = view.part("rating-result");
    this.rating = null; // the saved verdict, "up" or "down"
    this.busy = false;
    for (const button of this.buttons) {
      button.addEventListener("click", () => this.rate(button.dataset.rating));
    }
  }

  say(message, ok) {
    this.result.textContent = message;
    this.result.classList.toggle("feedback-ok", ok);
    this.result.classList.toggle("feedback-error", !ok);
  }

  show(rating) {
    for (const button of this.buttons) {
      button.setAttribute("aria-pressed", button.dataset.rating === rating ? "true" : "false");
    }
  }

  async rate(rating) {
    if (this.busy) return;
    if (rating === this.rating) {
      this.say(`Already rated as ${RATING_WORDS[rating]}.`, true);
      return;
    }
    const body = {
      messages: this.answer.messages,
      completion: this.answer.completion,
      rating,
      model: this.answer.version,
    };
    if (this.answer.completionId) body.completion_id = this.answer.completionId;

    this.busy = true;
    this.buttons.forEach((button) => (button.disabled = true));
    try {
      const record = await this.api.json("v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      this.rating = rating;
      this.show(rating);
      this.say(`Thanks! Rated as ${RATING_WORDS[rating]} (id ${record.id}).`, true);
    } catch (error) {
      this.say(`Could not save the rating: ${error.message}`, false);
    } finally {
      this.busy = false;
      this.buttons.forEach((button) => (button.disabled = false));
    }
  }
}

/** The page: model selector, conversation, composer. */
class ChatPage {
  constructor(doc) {
    this.doc = doc;
    this.conversation = doc.getElementById("conversation");
    this.emptyHint = doc.getElementById("empty-hint");
    this.template = doc.getElementById("message-template");
    this.composer = doc.getElementById("composer");
    this.prompt = doc.getElementById("prompt");
    this.sendButton = doc.getElementById("send");
    this.stopButton = doc.getElementById("stop");
    this.modelSelect = doc.getElementById("model-select");
    this.status = doc.getElementById("status");
    this.keyPrompt = new KeyPrompt(doc, () => this.loadModels());
    this.api = new ApiClient(this.keyPrompt);
    this.history = []; // [{role, content}] as sent to the API
    // The latest completion id naming the side of a canary rollout this conversation was
    // assigned to, sent back so the conversation stays with that side.
    this.assignedId = null;
    this.chatNumber = 0; // bumped by "New chat", so a reply still streaming is dropped
    this.abortController = null;

    this.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendPrompt();
    });
    this.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.composer.requestSubmit();
      }
    });
    this.stopButton.addEventListener("click", () => this.abortController?.abort());
    doc.getElementById("new-chat").addEventListener("click", () => this.newChat());
    doc
      .getElementById("api-key-button")
      .addEventListener("click", () => this.keyPrompt.open("Enter the API key for this server."));
  }

  setStatus(message) {
    this.status.textContent = message;
  }

  async loadModels() {
    try {
      const list = await this.api.json("v1/models");
      const models = (list.data || []).filter((model) => model.id);
      if (!models.length) return;
      const ids = models.map((model) => model.id);
      const previous = this.modelSelect.value;
      this.modelSelect.replaceChildren(
        ...models.map((model) => {
          const option = this.doc.createElement("option");
          option.value = model.id;
          // Names that follow an alias say which version answers now, e.g. "ouro (v3)".
          const pinned = model.version == null || model.id === `ouro@v${model.version}`;
          option.textContent = pinned ? model.id : `${model.id} (v${model.version})`;
          return option;
        }),
      );
      const wanted = [previous, DEFAULT_MODEL].find((id) => ids.includes(id));
      this.modelSelect.value = wanted || ids[0];
      this.setStatus("");
    } catch (error) {
      this.setStatus(`Could not list the models: ${error.message}`);
    }
  }

  newChat() {
    this.abortController?.abort();
    this.chatNumber += 1;
    this.history = [];
    this.assignedId = null;
    this.conversation.replaceChildren(this.emptyHint);
    this.emptyHint.hidden = false;
    this.setStatus("");
    this.prompt.focus();
  }

  addMessage(role, text) {
    const view = new MessageView(this.template, role, text);
    this.emptyHint.hidden = true;
    this.conversation.append(view.element);
    view.element.scrollIntoView({ block: "end" });
    return view;
  }

  setSending(sending) {
    this.sendButton.disabled = sending;
    this.stopButton.hidden = !sending;
  }

  sendPrompt() {
    const text = this.prompt.value.trim();
    if (!text || this.abortController) return;
    this.prompt.value = "";
    this.send(text);
  }

  async send(text) {
    const chatNumber = this.chatNumber;
    const messages = [...this.history, { role: "user", content: text }];
    const model = this.modelSelect.value || DEFAULT_MODEL;
    const userView = this.addMessage("user", text);
    const reply = this.addMessage("assistant", "");
    reply.setBusy(true);
    reply.setVersion(model);
    this.abortController = new AbortController();
    this.setSending(true);
    this.setStatus("Ouro is answering…");

    let completionId = null;
    let version = null;
    let stopped = false;
    const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
    if (this.assignedId) headers["x-ouro-conversation"] = this.assignedId;
    try {
      const response = await this.api.fetch("v1/chat/completions", {
        method: "POST",
        headers,
        body: JSON.stringify({ model, messages, stream: true }),
        signal: this.abortController.signal,
      });
      if (!response.ok) throw await readError(response);
      version = response.headers.get("x-ouro-model-version");
      reply.setVersion(version);
      reply.setRoute(
        version,
        response.headers.get("x-ouro-route"),
        response.headers.get("x-ouro-route-similarity"),
      );
      for await (const data of readServerSentEvents(response.body)) {
        if (data === "[DONE]") break;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          throw new ApiError(chunk.error.code ?? 500, chunk.error.message, chunk.error.type);
        }
        if (chunk.id) completionId = chunk.id;
        if (chunk.model) {
          version = chunk.model;
          reply.setVersion(version);
        }
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) reply.append(choice.delta.content);
        }
      }
    } catch (error) {
      if (error.name !== "AbortError") {
        this.fail(userView, reply, text, error);
        return;
      }
      stopped = true;
    } finally {
      reply.setBusy(false);
      this.abortController = null;
      this.setSending(false);
    }

    if (chatNumber !== this.chatNumber) return;
    const completion = reply.text;
    if (stopped && !completion) {
      this.fail(userView, reply, text, new Error("stopped before the first word"));
      return;
    }
    // The answer (even a stopped one) is part of the conversation and can be corrected
    // or rated.
    this.history = [...messages, { role: "assistant", content: completion }];
    if (completionId && ASSIGNED_ID.test(completionId)) this.assignedId = completionId;
    const answer = { messages, completion, completionId, version: version || model };
    new CorrectionForm(reply, this.api, answer);
    new RatingButtons(reply, this.api, answer);
    this.setStatus(stopped ? "Stopped." : "");
  }

  fail(userView, reply, text, error) {
    // The turn is not part of the conversation; give the text back to retry.
    userView.showError("Not sent.");
    reply.showError(`Error: ${error.message}`);
    if (!this.prompt.value) this.prompt.value = text;
    this.setStatus(`The request failed: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const page = new ChatPage(document);
  page.loadModels();
  page.prompt.focus();
});
