// chatfleet web chat: sign in with an API key, conversations, streamed Markdown replies.
// Model output is untrusted: it is rendered by marked and then sanitized by DOMPurify before it
// touches the DOM, and the page's Content-Security-Policy allows no inline script either.
"use strict";

(() => {
  const KEY_STORAGE = "chatfleet.apiKey";
  const $ = (id) => document.getElementById(id);
  const state = {
    key: localStorage.getItem(KEY_STORAGE),
    conversationId: null,
    messages: [], // as the server last described them (plus the streaming reply)
    controller: null, // AbortController of the reply being streamed
  };

  // ---- HTTP -------------------------------------------------------------------------------
  async function apiError(res) {
    let message = `HTTP ${res.status}`;
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON */ }
    const retry = res.headers.get("Retry-After");
    if (retry) message += ` (retry in ${retry}s)`;
    const err = new Error(message);
    err.status = res.status;
    return err;
  }

  function headers(json) {
    const h = { Authorization: `Bearer ${state.key}` };
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(method, path, body) {
    const res = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!res.ok) throw await apiError(res);
    return res.json();
  }

  // Yields the JSON of each SSE `data:` event ([DONE] ends the stream).
  async function* sseEvents(stream) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const raw = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = raw.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
    }
  }

  // ---- rendering --------------------------------------------------------------------------
  function renderMarkdown(text) {
    const html = window.marked.parse(text, { gfm: true, async: false });
    return window.DOMPurify.sanitize(html, {
      FORBID_TAGS: ["style", "form", "input", "textarea", "button", "select"],
      FORBID_ATTR: ["style"],
    });
  }

  async function copyText(text, button) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  function addCopyButtons(body) {
    for (const pre of body.querySelectorAll("pre")) {
      const code = pre.querySelector("code") || pre;
      const text = code.textContent;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.addEventListener("click", () => copyText(text, button));
      pre.appendChild(button);
    }
  }

  const STATUS_TEXT = {
    stopped: "Stopped.",
    incomplete: "Incomplete: the reply was interrupted.",
  };

  function statusText(m) {
    if (m.status === "failed") return `Failed: ${m.error || "the reply failed"}`;
    return STATUS_TEXT[m.status] || "";
  }

  function updateMessage(el, m) {
    el.dataset.status = m.status;
    if (m.id) el.dataset.id = m.id;
    const body = el.querySelector(".body");
    if (m.role === "user") {
      body.textContent = m.content;
    } else {
      body.innerHTML = renderMarkdown(m.content);
      addCopyButtons(body);
    }
    el.querySelector(".tool-calls").replaceChildren(...(m.tool_calls || []).map(toolCallElement));
    el.querySelector(".status").textContent = statusText(m);
  }

  // A call the model asked for: its function's name and its arguments (pretty once they parse).
  function toolCallElement(call) {
    const el = document.createElement("div");
    el.className = "tool-call";
    const name = document.createElement("div");
    name.className = "tool-name";
    name.textContent = `Tool call: ${call.function.name}`;
    const args = document.createElement("pre");
    const code = document.createElement("code");
    try {
      code.textContent = JSON.stringify(JSON.parse(call.function.arguments), null, 2);
    } catch {
      code.textContent = call.function.arguments; // still streaming, or cut short
    }
    args.appendChild(code);
    el.append(name, args);
    return el;
  }

  // Adds one streamed tool-call delta: id and name come once, the arguments in pieces.
  function addToolCallDelta(m, delta) {
    m.tool_calls = m.tool_calls || [];
    const call = m.tool_calls[delta.index]
      || (m.tool_calls[delta.index] = { id: null, type: "function", function: { name: "", arguments: "" } });
    if (delta.id) call.id = delta.id;
    const fn = delta.function || {};
    call.function.name += fn.name || "";
    call.function.arguments += fn.arguments || "";
  }

  function messageElement(m) {
    const el = document.createElement("div");
    el.className = `message ${m.role}`;
    const role = document.createElement("div");
    role.className = "role";
    role.textContent = m.role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "body";
    const calls = document.createElement("div");
    calls.className = "tool-calls";
    const status = document.createElement("div");
    status.className = "status";
    el.append(role, body, calls, status);
    updateMessage(el, m);
    return el;
  }

  function renderMessages() {
    const box = $("messages");
    box.replaceChildren(...state.messages.map(messageElement));
    box.scrollTop = box.scrollHeight;
    updateButtons();
  }

  function updateButtons() {
    const streaming = state.controller !== null;
    $("send").hidden = streaming;
    $("stop").hidden = !streaming;
    const last = state.messages[state.messages.length - 1];
    $("regenerate").hidden = streaming || !last;
  }

  function showBanner(text) {
    $("banner").textContent = text;
    $("banner").hidden = !text;
  }

  // ---- conversations ----------------------------------------------------------------------
  async function loadConversations() {
    const list = await api("GET", "/api/conversations?limit=100");
    const items = list.data.map((c) => {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      if (c.id === state.conversationId) li.className = "active";
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title || "New chat";
      open.title = c.title;
      open.addEventListener("click", () => openConversation(c.id));
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.title = "Delete";
      del.addEventListener("click", () => deleteConversation(c.id));
      li.append(open, del);
      return li;
    });
    $("conversations").replaceChildren(...items);
  }

  async function openConversation(id) {
    if (state.controller) return;
    showBanner("");
    const conv = await api("GET", `/api/conversations/${encodeURIComponent(id)}`);
    state.conversationId = conv.id;
    state.messages = conv.messages;
    location.hash = conv.id;
    $("conversation-title").textContent = conv.title || "New chat";
    renderMessages();
    await loadConversations();
  }

  function newChat() {
    if (state.controller) return;
    state.conversationId = null;
    state.messages = [];
    history.replaceState(null, "", location.pathname);
    $("conversation-title").textContent = "New chat";
    showBanner("");
    renderMessages();
    loadConversations();
    $("message-input").focus();
  }

  async function deleteConversation(id) {
    await api("DELETE", `/api/conversations/${encodeURIComponent(id)}`);
    if (id === state.conversationId) newChat();
    else await loadConversations();
  }

  // ---- replies ----------------------------------------------------------------------------
  // Streams a reply from `path`; `userText` is shown at once and put back if nothing was stored.
  async function streamReply(path, body, userText) {
    const controller = new AbortController();
    state.controller = controller;
    showBanner("");
    const box = $("messages");
    const userEl = userText === null ? null : messageElement({ role: "user", content: userText, status: "complete" });
    if (userEl) box.appendChild(userEl);
    let reply = null;
    let replyEl = null;
    let pending = false;
    const draw = () => {
      pending = false;
      updateMessage(replyEl, reply);
      box.scrollTop = box.scrollHeight;
    };
    updateButtons();
    try {
      const res = await fetch(path, {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!res.ok) throw await apiError(res);
      for await (const event of sseEvents(res.body)) {
        if (event.type === "start") {
          if (userText === null && state.messages.length
              && state.messages[state.messages.length - 1].role === "assistant") {
            state.messages.pop(); // regenerate replaces the last reply
            box.lastElementChild.remove();
          }
          if (event.user_message) state.messages.push(event.user_message);
          reply = event.message;
          state.messages.push(reply);
          replyEl = messageElement(reply);
          box.appendChild(replyEl);
        } else if (event.type === "delta") {
          reply.content += event.content || "";
          for (const delta of event.tool_calls || []) addToolCallDelta(reply, delta);
          if (!pending) {
            pending = true;
            requestAnimationFrame(draw);
          }
        } else if (event.type === "end") {
          Object.assign(reply, event.message);
          draw();
        }
      }
    } catch (err) {
      if (reply && err.name === "AbortError") {
        reply.status = "stopped";
        draw();
      } else if (reply) {
        reply.status = "failed";
        reply.error = err.message;
        draw();
      } else {
        if (userEl) {
          userEl.remove();
          $("message-input").value = userText;
        }
        if (err.name !== "AbortError") showBanner(err.message);
      }
    } finally {
      state.controller = null;
      updateButtons();
    }
  }

  async function send(text) {
    if (!state.conversationId) {
      const conv = await api("POST", "/api/conversations", {});
      state.conversationId = conv.id;
      location.hash = conv.id;
    }
    const id = encodeURIComponent(state.conversationId);
    await streamReply(`/api/conversations/${id}/messages`, { content: text }, text);
    const conv = await api("GET", `/api/conversations/${id}`);
    $("conversation-title").textContent = conv.title || "New chat";
    await loadConversations();
  }

  // ---- sign in and wiring -----------------------------------------------------------------
  async function signIn(key) {
    state.key = key;
    const me = await api("GET", "/api/me");
    localStorage.setItem(KEY_STORAGE, key);
    $("user-name").textContent = me.user;
    $("sign-in-view").hidden = true;
    $("chat-view").hidden = false;
    const wanted = location.hash.slice(1);
    if (wanted) {
      try {
        await openConversation(wanted);
        return;
      } catch (_) { /* gone: start fresh */ }
    }
    newChat();
  }

  function showSignIn(message) {
    $("chat-view").hidden = true;
    $("sign-in-view").hidden = false;
    $("sign-in-error").textContent = message || "";
    $("key-input").focus();
  }

  function wire() {
    $("sign-in-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      try {
        await signIn($("key-input").value.trim());
      } catch (err) {
        showSignIn(err.message);
      }
    });
    $("sign-out").addEventListener("click", () => {
      localStorage.removeItem(KEY_STORAGE);
      state.key = null;
      showSignIn("");
    });
    $("new-chat").addEventListener("click", newChat);
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const input = $("message-input");
      const text = input.value.trim();
      if (!text || state.controller) return;
      input.value = "";
      send(text).catch((err) => showBanner(err.message));
    });
    $("message-input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => {
      if (state.controller) state.controller.abort();
    });
    $("regenerate").addEventListener("click", () => {
      if (!state.conversationId || state.controller) return;
      const id = encodeURIComponent(state.conversationId);
      streamReply(`/api/conversations/${id}/regenerate`, {}, null)
        .then(loadConversations).catch((err) => showBanner(err.message));
    });
  }

  wire();
  if (state.key) {
    signIn(state.key).catch((err) => showSignIn(err.status === 401 ? "" : err.message));
  } else {
    showSignIn("");
  }
})();
