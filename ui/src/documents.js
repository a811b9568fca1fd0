// The dataset view: drag-and-drop upload with per-file progress, the documents with their status,
// and one document's chunks with their metadata.
import { useEffect, useState } from "preact/hooks";
import { encPath, enc, getJson, uploadFile } from "./api.js";
import { html, Meta, Thumb, when } from "./html.js";

function UploadRow({ item }) {
  const pct = Math.round(item.progress * 100);
  return html`
    <li class=${"upload upload-" + item.state} data-name=${item.name} data-state=${item.state}>
      <span class="name">${item.name}</span>
      <progress max="100" value=${pct}></progress>
      <span class="state">${item.message || (item.state === "sending" ? pct + "%" : item.state)}</span>
    </li>`;
}

// What the upload summary says about the one file sent.
function outcome(summary) {
  if (summary.failed.length) return ["failed", "failed: " + summary.failed.map((f) => f.reason).join("; ")];
  if (summary.skipped.length) return ["skipped", "skipped: " + summary.skipped.map((f) => f.reason).join("; ")];
  if (summary.indexed) return ["indexed", "indexed as " + summary.doc_ids.join(", ")];
  return ["unchanged", "unchanged (already indexed)"];
}

function Uploader({ collection, onUploaded, onCollection }) {
  const [target, setTarget] = useState(collection || "");
  const [items, setItems] = useState([]);
  const [over, setOver] = useState(false);
  useEffect(() => { if (collection) setTarget(collection); }, [collection]);

  async function send(files) {
    const start = items.length;
    const list = [...files].map((f) => ({ name: f.name, progress: 0, state: "queued", message: "" }));
    setItems((old) => [...old, ...list]);
    const update = (i, patch) => setItems((old) => old.map((x, j) => (j === start + i ? Object.assign({}, x, patch) : x)));
    let name = target.trim();
    // Files go one at a time: the server indexes each as it arrives and the bars stay readable.
    for (let i = 0; i < list.length; i++) {
      update(i, { state: "sending" });
      try {
        const summary = await uploadFile(files[i], name, (p) => update(i, { progress: p, state: p < 1 ? "sending" : "indexing", message: p < 1 ? "" : "indexing..." }));
        const [state, message] = outcome(summary);
        update(i, { progress: 1, state, message });
        name = name || summary.collection;
      } catch (e) {
        update(i, { state: "error", message: e.message });
      }
    }
    if (name) onCollection(name);
    onUploaded();
  }

  return html`
    <section class="upload-box">
      <div id="dropzone" class=${over ? "over" : ""}
        onDragOver=${(e) => { e.preventDefault(); setOver(true); }} onDragLeave=${() => setOver(false)}
        onDrop=${(e) => { e.preventDefault(); setOver(false); if (e.dataTransfer.files.length) send(e.dataTransfer.files); }}>
        <p>Drop files here to upload and index them</p>
        <label class="file">or choose files <input id="files" type="file" multiple
          onChange=${(e) => { const f = [...e.currentTarget.files]; e.currentTarget.value = ""; if (f.length) send(f); }} /></label>
        <label>into collection <input id="upload-collection" type="text" placeholder="the server's default"
          value=${target} onInput=${(e) => setTarget(e.currentTarget.value)} /></label>
      </div>
      <ul id="uploads">${items.map((item) => html`<${UploadRow} item=${item} />`)}</ul>
    </section>`;
}

function Chunks({ collection, docId, onClose }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    setData(null);
    setError(null);
    getJson("/v1/collections/" + enc(collection) + "/documents/" + encPath(docId)).then(setData, (e) => setError(e.message));
  }, [collection, docId]);
  return html`
    <section id="chunks" aria-label="Chunks">
      <header><h3>${docId}</h3><button id="close-chunks" type="button" onClick=${onClose}>close</button></header>
      ${error && html`<p class="error">${error}</p>`}
      ${!data && !error && html`<p>loading...</p>`}
      ${data && html`
        <p class="summary">${data.document.status} · ${data.document.chunks} chunks · ${data.document.image_records} CLIP records
          · ${data.document.ocr_pages} OCR pages</p>
        <ol class="chunk-list">${data.chunks.map((c) => html`
          <li class=${"chunk chunk-" + c.modality} data-id=${c.id}>
            <div class="meta">${c.modality}${c.page != null ? " · page " + c.page : ""} · ${c.id}</div>
            ${c.image_uri && html`<${Thumb} uri=${c.image_uri} alt=${docId} />`}
            ${c.text != null && html`<div class="text">${c.text}</div>`}
            <details><summary>metadata</summary><${Meta} data=${c.metadata} /></details>
          </li>`)}</ol>`}
    </section>`;
}

const PAGE = 100;

export function DocumentsPanel({ hidden, connected, collection, tick, onUploaded, onCollection }) {
  const [filter, setFilter] = useState("");
  const [offset, setOffset] = useState(0);
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [open, setOpen] = useState(null);

  useEffect(() => {
    setOpen(null);
    setOffset(0);
  }, [collection, filter]);
  useEffect(() => {
    if (!connected || !collection) { setData(null); return; }
    const q = "?offset=" + offset + "&limit=" + PAGE + (filter ? "&status=" + filter : "");
    getJson("/v1/collections/" + enc(collection) + "/documents" + q).then((d) => { setData(d); setError(null); },
      (e) => setError(e.message));
  }, [connected, collection, filter, offset, tick]);

  return html`
    <section id="documents-panel" class="panel" hidden=${hidden} aria-label="Documents">
      <${Uploader} collection=${collection} onUploaded=${onUploaded} onCollection=${onCollection} />
      <div class="toolbar">
        <h2>Documents ${data && html`<small>${data.version} · ${Object.entries(data.counts).map(([k, v]) => k + " " + v).join(" · ")}</small>`}</h2>
        <label>status <select id="doc-status" value=${filter} onChange=${(e) => setFilter(e.currentTarget.value)}>
          <option value="">all</option><option value="indexed">indexed</option><option value="failed">failed</option>
          <option value="pending">pending</option><option value="skipped">skipped</option></select></label>
      </div>
      ${error && html`<p class="error">${error}</p>`}
      ${data && html`
        <table id="documents">
          <thead><tr><th>document</th><th>status</th><th>chunks</th><th>images</th><th>OCR pages</th><th>updated</th></tr></thead>
          <tbody>${data.documents.map((d) => html`
            <tr class=${"doc status-" + d.status} data-doc-id=${d.doc_id} data-status=${d.status}>
              <td><button type="button" class="open" onClick=${() => setOpen(d.doc_id)}>${d.doc_id}</button>
                ${d.reason && html`<div class="reason">${d.reason}</div>`}</td>
              <td><span class=${"badge " + d.status}>${d.status}</span></td>
              <td>${d.chunks}</td><td>${d.image_records}</td><td>${d.ocr_pages == null ? "—" : d.ocr_pages}</td>
              <td>${when(d.updated_at)}</td>
            </tr>`)}</tbody>
        </table>
        ${data.total > data.documents.length && html`<p class="pager">
          <button id="docs-prev" type="button" disabled=${offset === 0} onClick=${() => setOffset(Math.max(0, offset - PAGE))}>previous</button>
          ${" "}${data.offset + 1}–${data.offset + data.documents.length} of ${data.total}${" "}
          <button id="docs-next" type="button" disabled=${offset + PAGE >= data.total} onClick=${() => setOffset(offset + PAGE)}>next</button></p>`}`}
      ${open && html`<${Chunks} collection=${collection} docId=${open} onClose=${() => setOpen(null)} />`}
    </section>`;
}
