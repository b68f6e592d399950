// limamono web chat. Plain JavaScript, no dependencies, no build step.
//
// Everything that comes from a model, a card or a saved chat is put into the page as DOM
// text (textContent / createTextNode), never parsed as HTML; the page's own elements are
// made with createElement. The server's Content-Security-Policy forbids inline script, so
// even markup that reached the DOM could not run. Every request goes to this origin.
"use strict";

const SPAN_KINDS = new Set(["narration", "dialogue", "thought", "sound", "title"]);
const KEY_STORE = "limamono-api-key"; // sessionStorage: this tab only
const USER_STORE = "limamono-user";   // localStorage: just the name you chat as
const POLL_MS = 3000;

const state = {
  info: null,
  chats: [],
  chat: null,           // the open chat as the server returned it
  streaming: false,
  editing: null,        // position of the message being edited
  updated: null,        // the open chat's "updated" stamp in the chat list
  offline: false,
};

const $ = (id) => document.getElementById(id);

// --------------------------------------------------------------------------- DOM helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function button(label, title, onClick, className) {
  const node = el("button", className || "", label);
  node.type = "button";
  if (title) node.title = title;
  node.addEventListener("click", onClick);
  return node;
}

// The house-style spans ([kind, text] pairs, split by the server's style.split_spans) as
// <span class="s-KIND">text</span>; unknown kinds fall back to narration.
function renderSpans(container, spans) {
  container.replaceChildren();
  for (const pair of spans || []) {
    const kind = SPAN_KINDS.has(pair[0]) ? pair[0] : "narration";
    const span = el("span", "s-" + kind);
    span.appendChild(document.createTextNode(String(pair[1])));
    container.appendChild(span);
  }
}

function showNotice(message) {
  const notice = $("notice");
  notice.textContent = message;
  notice.hidden = !message;
}

// --------------------------------------------------------------------------- requests

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function explain(status, message) {
  if (status === 503) return "The server is busy with other requests; try again in a moment.";
  if (status === 0) return "Cannot reach the server. Is `limamono serve` still running? The page reconnects by itself.";
  if (status === 409) return message + "\n(The chat was reloaded.)";
  return message || `request failed (HTTP ${status})`;
}

function headers(json) {
  const out = {};
  if (json) out["Content-Type"] = "application/json";
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) out["Authorization"] = "Bearer " + key;
  return out;
}

let keyAsked = null;
function askKey() {
  if (keyAsked) return keyAsked;
  keyAsked = new Promise((resolve) => {
    const dialog = $("key-dialog");
    const done = () => {
      const value = $("key-input").value.trim();
      if (value) sessionStorage.setItem(KEY_STORE, value);
      $("key-input").value = "";
      keyAsked = null;
      resolve(Boolean(value));
    };
    dialog.addEventListener("close", done, { once: true });
    dialog.showModal();
  });
  return keyAsked;
}

// fetch with the key; a 401 asks for the key once and retries.
async function request(method, path, body, raw) {
  const init = { method, headers: headers(body !== undefined && !raw), credentials: "same-origin" };
  if (body !== undefined) init.body = raw ? body : JSON.stringify(body);
  if (raw) init.headers["Content-Type"] = "application/octet-stream";
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, String(error));
  }
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    if (await askKey()) return request(method, path, body, raw);
  }
  return response;
}

async function errorOf(response) {
  let message = "";
  try {
    const data = await response.json();
    message = (data.error && data.error.message) || (data.detail && data.detail.msg) || "";
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message);
}

async function api(method, path, body, raw) {
  const response = await request(method, path, body, raw);
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

function report(error) {
  const status = error instanceof ApiError ? error.status : -1;
  showNotice(explain(status, error.message));
  if (status === 0) goOffline();
  if (status === 409 && state.chat) openChat(state.chat.id, true);
}

// --------------------------------------------------------------------------- start-up

async function start() {
  const name = localStorage.getItem(USER_STORE);
  if (name) $("user-name").value = name;
  bindControls();
  try {
    await loadInfo();
    await refreshChats();
    const match = /^#chat=(\d+)$/.exec(location.hash);
    if (match) await openChat(Number(match[1]));
  } catch (error) {
    report(error);
  }
  setInterval(poll, POLL_MS);
  updateButtons();
}

async function loadInfo() {
  const info = await api("GET", "/webchat/api/info");
  state.info = info;
  $("model-line").textContent = `${info.model} · context ${info.context_length}`;
  const characters = $("character-select");
  characters.replaceChildren();
  for (const name of info.characters) characters.appendChild(option(name, name));
  if (!info.characters.length) characters.appendChild(option("", "(none bundled: import a card)"));
  $("start-chat").disabled = !info.characters.length;
  const lengths = $("length-select");
  lengths.replaceChildren(option("", `auto (${info.default_length})`));
  for (const length of info.lengths) lengths.appendChild(option(length, length));
  const presets = $("preset-select");
  presets.replaceChildren(option("", `default (${info.default_preset})`));
  for (const preset of info.presets) presets.appendChild(option(preset, preset));
  showAdapters(info);
}

// The adapter choice of the next reply, as llama.cpp's per-request "lora" field: "" is
// every loaded adapter at its scale (the server's default), "base" none, a number that
// adapter alone at its scale. Shown only when the engine loads adapters at run time.
function showAdapters(info) {
  const select = $("adapter-select");
  const chosen = select.value;
  select.replaceChildren(option("", "all loaded (default)"), option("base", "none (base model)"));
  for (const adapter of info.adapters) {
    select.appendChild(option(String(adapter.id), `${adapter.name} × ${adapter.scale}`));
  }
  if ([...select.options].some((node) => node.value === chosen)) select.value = chosen;
  $("adapter-label").hidden = !info.runtime_adapters;
}

// Adapters are loaded and unloaded by the admin while the page is open: list them afresh.
async function refreshAdapters() {
  try {
    state.info = await api("GET", "/webchat/api/info");
    showAdapters(state.info);
  } catch (error) {
    // the list stays as it was; the next reply's answer says what went wrong
  }
}

function adapterChoice() {
  const value = $("adapter-select").value;
  if (!state.info || !state.info.runtime_adapters || value === "") return undefined;
  if (value === "base") return [];
  const adapter = state.info.adapters.find((item) => String(item.id) === value);
  return adapter ? [{ id: adapter.id, scale: adapter.scale }] : undefined;
}

function option(value, label) {
  const node = el("option", "", label);
  node.value = value;
  return node;
}

// --------------------------------------------------------------------------- chat list

async function refreshChats() {
  state.chats = await api("GET", "/webchat/api/chats");
  // Our own changes move the stamp too; remember it so that poll() reloads only for others'.
  const entry = state.chat && state.chats.find((c) => c.id === state.chat.id);
  if (entry) state.updated = stamp(entry);
  renderChatList();
}

function renderChatList() {
  const list = $("chat-list");
  list.replaceChildren();
  for (const chat of state.chats) {
    const item = el("li");
    item.dataset.chatId = String(chat.id);
    if (state.chat && state.chat.id === chat.id) item.className = "active";
    const open = button("", `Open chat ${chat.id}`, () => { openChat(chat.id); closeDrawer(); }, "open");
    open.appendChild(el("span", "who", chat.character));
    open.appendChild(el("span", "meta", `${chat.user} · ${chat.messages} messages · #${chat.id}`));
    item.appendChild(open);
    item.appendChild(button("×", `Delete chat ${chat.id}`, () => deleteChat(chat), "remove"));
    list.appendChild(item);
  }
  if (!state.chats.length) list.appendChild(el("li", "quiet", "No chats yet."));
}

async function deleteChat(chat) {
  if (!confirm(`Delete chat #${chat.id} with ${chat.character}? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/webchat/api/chats/${chat.id}`);
    if (state.chat && state.chat.id === chat.id) {
      state.chat = null;
      history.replaceState(null, "", location.pathname);
      renderChat();
    }
    await refreshChats();
  } catch (error) {
    report(error);
  }
}

// keepNotice: the chat is reloaded after an error that the notice still explains.
async function openChat(id, keepNotice) {
  try {
    const chat = await api("GET", `/webchat/api/chats/${id}`);
    if (!keepNotice) showNotice("");
    setChat(chat);
    history.replaceState(null, "", `#chat=${id}`);
    renderChatList();
  } catch (error) {
    report(error);
  }
}

function setChat(chat) {
  state.chat = chat;
  state.editing = null;
  const entry = state.chats.find((c) => c.id === chat.id);
  state.updated = entry ? stamp(entry) : null;
  renderChat();
}

// The terminal (or another tab) may change the open chat: the chat list's "updated"
// stamp shows it; the chat is then reloaded. A lost server is retried here too.
// A chat's change stamp: its version, raised by every change (two changes within one
// second share an "updated" time), with the time for a chat the version does not cover.
function stamp(entry) {
  return `${entry.updated}#${entry.version}`;
}

async function poll() {
  if (state.streaming || state.editing !== null || document.hidden) return;
  try {
    const chats = await api("GET", "/webchat/api/chats");
    if (state.offline) {
      state.offline = false;
      showNotice("");
      await loadInfo();
    }
    state.chats = chats;
    const entry = state.chat && chats.find((c) => c.id === state.chat.id);
    if (entry && stamp(entry) !== state.updated) {
      await openChat(state.chat.id);
    } else {
      renderChatList();
    }
  } catch (error) {
    if (error instanceof ApiError && error.status === 0) goOffline();
  }
}

function goOffline() {
  state.offline = true;
  showNotice(explain(0, ""));
}

// --------------------------------------------------------------------------- new chats

async function startBundled() {
  const character = $("character-select").value;
  if (!character) return;
  await created(() => api("POST", "/webchat/api/chats", { character, user: userName() }));
}

async function importFile(file) {
  if (!file) return;
  const error = $("import-error");
  error.hidden = true;
  const query = new URLSearchParams({ name: file.name, user: userName() });
  await created(async () => {
    try {
      return await api("POST", `/webchat/api/chats/import?${query}`, await file.arrayBuffer(), true);
    } catch (failure) {
      if (failure instanceof ApiError && failure.status === 400) {
        error.textContent = failure.message;  // the card reader's message names the problem
        error.hidden = false;
        return null;
      }
      throw failure;
    }
  });
  $("card-file").value = "";
}

async function created(make) {
  try {
    const chat = await make();
    if (!chat) return;
    $("import-error").hidden = true;
    showNotice("");
    await refreshChats();
    setChat(chat);
    history.replaceState(null, "", `#chat=${chat.id}`);
    renderChatList();
    closeDrawer();
    if (!chat.messages.length) await generate("reply");
  } catch (error) {
    report(error);
  }
}

function userName() {
  const name = $("user-name").value.trim() || "User";
  localStorage.setItem(USER_STORE, name);
  return name;
}

// --------------------------------------------------------------------------- the chat

function renderChat() {
  const box = $("messages");
  box.replaceChildren();
  const chat = state.chat;
  $("chat-title").textContent = chat ? `${chat.character} & ${chat.user}` : "limamono";
  document.title = chat ? `${chat.character} · limamono` : "limamono chat";
  if (!chat) {
    box.appendChild(welcome());
  } else {
    chat.messages.forEach((message, position) => box.appendChild(messageView(message, position)));
  }
  box.scrollTop = box.scrollHeight;
  updateButtons();
}

function welcome() {
  const node = el("div", "welcome");
  node.id = "welcome";
  node.appendChild(el("h2", "", "Chat with a character"));
  node.appendChild(el("p", "", "Pick a bundled character and press Start chat, or drop a " +
    "SillyTavern card anywhere on the page. Chats are saved with `limamono chat`'s, so a " +
    "chat goes on in either."));
  return node;
}

function messageView(message, position) {
  const chat = state.chat;
  const last = position === chat.messages.length - 1;
  const node = el("article", `message ${message.role === "char" ? "char" : "user"}`);
  node.dataset.position = String(position);
  if (message.hidden) node.classList.add("hidden-message");
  const head = el("div", "message-head");
  head.appendChild(el("span", "name", message.name));
  if (message.length) {
    const length = el("span", "length", message.length);
    length.title = "The length label this message carries in the prompt";
    head.appendChild(length);
  }
  const tools = el("div", "message-tools");
  tools.appendChild(button("Edit", "Edit this message", () => startEdit(position)));
  tools.appendChild(button("Delete", "Delete this message", () => deleteMessage(position)));
  head.appendChild(tools);
  node.appendChild(head);
  if (state.editing === position) {
    node.appendChild(editBox(message, position));
  } else {
    const text = el("div", "text");
    renderSpans(text, message.spans);
    node.appendChild(text);
  }
  const foot = el("div", "message-foot");
  if (message.role === "char" && (message.swipes > 1 || last)) foot.appendChild(swipes(message, position, last));
  const note = footNote(message);
  if (note) foot.appendChild(el("span", "", note));
  if (foot.childNodes.length) node.appendChild(foot);
  return node;
}

function footNote(message) {
  if (message.cut === "user") return "cut where the model began writing your turn";
  if (message.cut === "header") return "cut where the model began a new ### block";
  if (message.finish_reason === "length") return "stopped at the token limit: Continue for more";
  if (message.finish_reason === "cancelled") return "stopped";
  return "";
}

function swipes(message, position, last) {
  const box = el("div", "swipes");
  const back = button("‹", "Previous swipe", () => chooseSwipe(position, message.swipe_id - 1), "swipe-left");
  back.disabled = message.swipe_id === 0 || state.streaming;
  const next = message.swipe_id < message.swipes - 1;
  const forward = button("›", next ? "Next swipe" : "Generate a new swipe", () => {
    if (next) chooseSwipe(position, message.swipe_id + 1);
    else generate("regenerate");
  }, "swipe-right");
  forward.disabled = state.streaming || (!next && !last);
  box.appendChild(back);
  box.appendChild(el("span", "swipe-count", `${message.swipe_id + 1}/${message.swipes}`));
  box.appendChild(forward);
  return box;
}

function editBox(message, position) {
  const box = el("div", "edit-box");
  const area = el("textarea");
  area.value = (message.spans || []).map((pair) => pair[1]).join("");
  area.setAttribute("aria-label", "Edit the message");
  const row = el("div", "row");
  row.appendChild(button("Cancel", "", () => { state.editing = null; renderChat(); }));
  row.appendChild(button("Save", "", () => saveEdit(position, area.value), "primary save-edit"));
  box.appendChild(area);
  box.appendChild(row);
  setTimeout(() => area.focus(), 0);
  return box;
}

function startEdit(position) {
  if (state.streaming) return;
  state.editing = position;
  renderChat();
}

async function change(path, body) {
  try {
    const chat = await api("POST", `/webchat/api/chats/${state.chat.id}/${path}`, body);
    showNotice("");
    await refreshChats();
    setChat(chat);
    renderChatList();
  } catch (error) {
    report(error);
  }
}

const saveEdit = (position, text) => change("edit", { position, text });
const deleteMessage = (position) => change("delete", { position });
const chooseSwipe = (position, index) => change("swipe", { position, index });
const undo = () => change("undo");

// --------------------------------------------------------------------------- streaming

async function generate(action, text) {
  if (!state.chat || state.streaming) return;
  const body = { action };
  if (text !== undefined) body.text = text;
  const length = $("length-select").value;
  const preset = $("preset-select").value;
  if (length) body.length = length;
  if (preset) body.preset = preset;
  const lora = adapterChoice();
  if (lora !== undefined) body.lora = lora;
  setStreaming(true);
  showNotice("");
  let target = null;
  try {
    const response = await request("POST", `/webchat/api/chats/${state.chat.id}/generate`, body);
    if (!response.ok) throw await errorOf(response);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.trim()) target = handleEvent(JSON.parse(line), target);
      }
    }
  } catch (error) {
    report(error);
    if (state.chat && !(error instanceof ApiError && error.status === 0)) openChat(state.chat.id, true);
  } finally {
    setStreaming(false);
    if (state.chat) renderChat();
    refreshChats().catch(() => {});
  }
}

function handleEvent(event, target) {
  if (event.type === "start") {
    state.chat = event.chat;
    renderChat();
    return streamTarget(event.target);
  }
  if (event.type === "queued") {
    $("stats").textContent = event.position > 1
      ? `waiting for the model: ${event.position - 1} replies ahead`
      : "waiting for the model";
    return target;
  }
  if (event.type === "text" && target) {
    renderSpans(target, event.spans);
    const box = $("messages");
    box.scrollTop = box.scrollHeight;
    return target;
  }
  if (event.type === "done") {
    state.chat = event.chat;
    showStats(event.stats);
    return target;
  }
  if (event.type === "error") {
    throw new ApiError(event.status, event.message);
  }
  return target;
}

// Where streamed text goes: a new message, a new swipe of the last one, or the end of it.
function streamTarget(kind) {
  const box = $("messages");
  let node;
  if (kind === "new") {
    const message = { role: "char", name: state.chat.character, spans: [], swipe_id: 0, swipes: 1 };
    node = messageView(message, state.chat.messages.length);
    box.appendChild(node);
  } else {
    node = box.lastElementChild;
  }
  node.classList.add("streaming");
  const count = node.querySelector(".swipe-count");
  const last = state.chat.messages[state.chat.messages.length - 1];
  if (kind === "swipe" && count && last) count.textContent = `${last.swipes + 1}/${last.swipes + 1}`;
  const text = node.querySelector(".text");
  if (kind !== "continue") text.replaceChildren();
  return text;
}

function showStats(stats) {
  if (!stats || stats.completion_tokens === undefined) return;
  const parts = [`${stats.completion_tokens} tokens`];
  if (stats.tokens_per_second) parts.push(`${stats.tokens_per_second} tok/s`);
  parts.push(`context ${stats.context_used}/${stats.context_length}`);
  if (stats.dropped) parts.push(`${stats.dropped} oldest messages out of context`);
  $("stats").textContent = parts.join(" · ");
}

async function stop() {
  if (!state.chat) return;
  try {
    await api("POST", `/webchat/api/chats/${state.chat.id}/stop`);
  } catch (error) {
    report(error);
  }
}

function setStreaming(on) {
  state.streaming = on;
  $("send").hidden = on;
  $("stop").hidden = !on;
  updateButtons();
}

function updateButtons() {
  const chat = state.chat;
  const idle = Boolean(chat) && !state.streaming;
  const lastChar = idle && chat.messages.length > 0 && chat.messages[chat.messages.length - 1].role === "char";
  $("regenerate").disabled = !idle;
  $("continue").disabled = !lastChar;
  $("undo").disabled = !idle;
  $("input").disabled = !chat;
  $("send").disabled = !idle;
}

// --------------------------------------------------------------------------- controls

function closeDrawer() {
  $("app").classList.remove("drawer");
  $("toggle-sidebar").setAttribute("aria-expanded", "false");
}

function bindControls() {
  $("start-chat").addEventListener("click", startBundled);
  $("card-file").addEventListener("change", (e) => importFile(e.target.files[0]));
  $("send-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("input");
    const text = input.value;
    if (!text.trim() || !state.chat || state.streaming) return;
    input.value = "";
    generate("send", text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("send-form").requestSubmit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("regenerate").addEventListener("click", () => generate("regenerate"));
  $("continue").addEventListener("click", () => generate("continue"));
  $("undo").addEventListener("click", undo);
  // the admin may have loaded or unloaded adapters while the user was elsewhere
  window.addEventListener("focus", () => { if (!state.streaming) refreshAdapters(); });
  $("toggle-sidebar").addEventListener("click", () => {
    const open = $("app").classList.toggle("drawer");
    $("toggle-sidebar").setAttribute("aria-expanded", String(open));
  });
  const zone = $("drop-zone");
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("card-file").click(); }
  });
  // A card dropped anywhere on the page is imported.
  let depth = 0;
  document.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; document.body.classList.add("dragging"); });
  document.addEventListener("dragleave", () => { if (--depth <= 0) { depth = 0; document.body.classList.remove("dragging"); } });
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) importFile(file);
  });
}

document.addEventListener("DOMContentLoaded", start);
