// Calls to the mmrag API. The key lives in `state.key` only (no cookie, no storage) and goes out
// as a bearer token with each call; errors arrive in OpenAI's shape and become Error messages.

export const state = { key: "" };

function headers(extra) {
  const out = Object.assign({}, extra || {});
  if (state.key) out["Authorization"] = "Bearer " + state.key;
  return out;
}

async function failure(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    message = body.error.code + ": " + body.error.message;
  } catch (e) {
    /* not JSON: keep the status line */
  }
  return new Error(message);
}

export async function api(path, init) {
  const response = await fetch(path, Object.assign({}, init, { headers: headers(init && init.headers) }));
  if (!response.ok) throw await failure(response);
  return response;
}

export async function getJson(path) {
  return (await api(path)).json();
}

export async function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

export const enc = encodeURIComponent;

// A document id may hold "/" (a file in a sub-folder): keep the slashes, encode each part.
export function encPath(docId) {
  return docId.split("/").map(enc).join("/");
}

// <img> cannot send the key: thumbnails are fetched with it and shown from blob: URLs.
const objectUrls = new Map();

export async function blobUrl(uri) {
  if (objectUrls.has(uri)) return objectUrls.get(uri);
  const blob = await (await api(uri)).blob();
  const url = URL.createObjectURL(blob);
  objectUrls.set(uri, url);
  return url;
}

// One file per request, so each has its own progress; XMLHttpRequest reports upload progress, fetch does not.
export function uploadFile(file, collection, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("files", file, file.name);
    if (collection) form.append("collection", collection);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/documents");
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else reject(new Error(body && body.error ? body.error.code + ": " + body.error.message : xhr.status + " " + xhr.statusText));
    };
    xhr.onerror = () => reject(new Error("the upload failed (network error)"));
    xhr.send(form);
  });
}

// Server-sent events from a fetch body: "event: x\ndata: {...}\n\n" blocks.
export async function* events(response) {
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
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      yield { name, data: data ? JSON.parse(data) : {} };
    }
  }
}
