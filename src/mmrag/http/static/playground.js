// mmrag playground: plain JavaScript, no build step. The API key lives in `key` below, nowhere
// else (no cookie, no localStorage); every call sends it as a bearer token. Text from the index is
// put in the page with textContent only, so a document cannot inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
let key = "";
const objectUrls = [];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function api(path, init) {
  const headers = Object.assign({}, (init && init.headers) || {});
  if (key) headers["Authorization"] = "Bearer " + key;
  const response = await fetch(path, Object.assign({}, init, { headers }));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    // Errors come in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
    try { const body = await response.json(); message = body.error.code + ": " + body.error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// <img> cannot send an Authorization header, so thumbnails are fetched and shown as blob: URLs.
async function thumbnail(uri, alt) {
  const img = el("img", { class: "thumb", alt: alt });
  try {
    const blob = await (await api(uri)).blob();
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    img.src = url;
  } catch (e) {
    img.alt = alt + " (" + e.message + ")";
  }
  return img;
}

function releaseThumbnails() {
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
}

async function connect() {
  key = $("key").value.trim();
  status("connecting...");
  try {
    const data = await (await api("/v1/collections")).json();
    const select = $("collection");
    select.replaceChildren(...data.collections.map((c) =>
      el("option", { value: c.name, text: c.name + " (" + c.documents + " documents)" })));
    select.disabled = data.collections.length === 0;
    status(data.collections.length ? "connected" : "connected; this key sees no collection", !data.collections.length);
  } catch (e) {
    status(e.message, true);
  }
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function metaLine(item) {
  const page = item.page != null ? " p." + item.page : "";
  const score = item.score != null ? " \u00b7 " + Number(item.score).toFixed(3) : "";
  return item.doc_id + page + " \u00b7 " + item.modality + score;
}

async function search(event) {
  event.preventDefault();
  const body = { collection: $("collection").value || undefined, k: 8, modality: $("modality").value };
  const text = $("query").value.trim();
  if (text) body.query = text;
  const file = $("image").files[0];
  if (file) body.image = await readFile(file);
  if (!text && !file) { status("type a query or choose an image", true); return; }
  const list = $("results");
  list.replaceChildren(el("li", { text: "searching..." }));
  releaseThumbnails();
  try {
    const data = await (await api("/v1/search", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    })).json();
    const items = await Promise.all(data.hits.map(async (hit) => {
      const item = el("li", { class: "hit hit-" + hit.modality, "data-doc-id": hit.doc_id },
        el("div", { class: "meta", text: metaLine(hit) }));
      if (hit.image_uri) item.append(await thumbnail(hit.image_uri, hit.doc_id));
      if (hit.text) item.append(el("div", { class: "text", text: hit.text }));
      return item;
    }));
    list.replaceChildren(...(items.length ? items : [el("li", { text: "no hits" })]));
    status(data.hits.length + " hits in " + data.took_ms + " ms");
  } catch (e) {
    list.replaceChildren(el("li", { class: "error", text: e.message }));
  }
}

// Server-sent events from a fetch body: "event: x\ndata: {...}\n\n" blocks.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { name, data: data ? JSON.parse(data) : {} };
    }
  }
}

function selectCitation(n) {
  for (const node of document.querySelectorAll(".citation.selected")) node.classList.remove("selected");
  const target = $("cite-" + n);
  if (target) { target.classList.add("selected"); target.scrollIntoView({ block: "nearest" }); }
}

// The answer's text with [n] markers as links to their citations and unsupported spans marked.
function renderAnswer(result) {
  const text = result.answer;
  const known = new Set(result.citations.map((c) => c.n));
  const flagged = ((result.verification && result.verification.unsupported) || [])
    .filter((u) => u.start != null && u.end != null).sort((a, b) => a.start - b.start);
  const out = [];
  const pushText = (segment, parent) => {
    const re = /\[(\d+)\]/g;
    let last = 0, m;
    while ((m = re.exec(segment))) {
      parent.push(document.createTextNode(segment.slice(last, m.index)));
      const n = Number(m[1]);
      if (known.has(n)) {
        const link = el("a", { class: "cite", href: "#cite-" + n, "data-n": String(n), text: m[0] });
        link.addEventListener("click", (e) => { e.preventDefault(); selectCitation(n); });
        parent.push(link);
      } else {
        parent.push(document.createTextNode(m[0]));
      }
      last = m.index + m[0].length;
    }
    parent.push(document.createTextNode(segment.slice(last)));
  };
  let pos = 0;
  for (const u of flagged) {
    if (u.start < pos) continue;
    pushText(text.slice(pos, u.start), out);
    const inner = [];
    pushText(text.slice(u.start, u.end), inner);
    out.push(el("mark", { class: "unsupported", title: "not supported by the sources: " + u.reasons.join(", ") }, ...inner));
    pos = u.end;
  }
  pushText(text.slice(pos), out);
  // The grounding check may add a citation the model did not mark: list every one after the text.
  const marked = new Set([...text.matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1])));
  const unmarked = result.citations.filter((c) => !marked.has(c.n));
  if (unmarked.length) {
    out.push(document.createTextNode(" \u2014 sources: "));
    for (const c of unmarked) pushText("[" + c.n + "]", out);
  }
  const box = $("answer");
  box.className = result.abstained ? "abstained" : "";
  box.replaceChildren(...out);

  const verdict = $("verdict");
  if (result.verification) {
    const bad = result.verification.unsupported.length;
    verdict.className = bad ? "flagged" : "ok";
    verdict.textContent = bad ? bad + " statement(s) not supported by the sources (marked)"
                              : "verified: every statement is supported by the sources";
  } else {
    verdict.className = "";
    verdict.textContent = result.abstained ? "abstained (" + result.guard + ")" : "";
  }
}

async function renderCitations(citations) {
  const items = await Promise.all(citations.map(async (c) => {
    const item = el("li", { class: "citation", id: "cite-" + c.n, value: String(c.n) },
      el("div", { class: "meta", text: "[" + c.n + "] " + metaLine(c) }));
    if (c.image_uri) item.append(await thumbnail(c.image_uri, c.doc_id));
    if (c.excerpt) item.append(el("div", { class: "excerpt", text: c.excerpt }));
    return item;
  }));
  $("citations").replaceChildren(...items);
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) { status("type a question", true); return; }
  const box = $("answer");
  box.className = "streaming";
  box.textContent = "";
  $("verdict").textContent = "";
  $("citations").replaceChildren();
  const body = { question, stream: true, collection: $("collection").value || undefined,
                 verify: $("verify").checked ? "mark" : "off", answer_mode: $("mode").value || undefined };
  try {
    const response = await api("/v1/answer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    for await (const ev of events(response)) {
      if (ev.name === "delta") box.textContent += ev.data.text;
      else if (ev.name === "answer") { renderAnswer(ev.data); await renderCitations(ev.data.citations); }
      else if (ev.name === "done") box.dataset.done = "true";
    }
  } catch (e) {
    box.className = "error";
    box.textContent = e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("load").addEventListener("click", connect);
  $("key").addEventListener("keydown", (e) => { if (e.key === "Enter") connect(); });
  $("search-form").addEventListener("submit", search);
  $("ask-form").addEventListener("submit", ask);
});
