// Search with the retriever, k, modality and metadata filters; image hits show their thumbnails.
import { useState } from "preact/hooks";
import { postJson } from "./api.js";
import { html, Meta, num, Thumb } from "./html.js";

const DOC_TYPES = ["", "txt", "markdown", "html", "pdf", "docx", "pptx", "image", "jsonl"];

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// "key=value, key2=value2" -> {key: value, ...}; numbers and booleans keep their type.
function parseMeta(text) {
  const out = {};
  for (const part of text.split(",")) {
    const cut = part.indexOf("=");
    if (cut <= 0) continue;
    const raw = part.slice(cut + 1).trim();
    out[part.slice(0, cut).trim()] = raw === "true" ? true : raw === "false" ? false : raw !== "" && !isNaN(Number(raw)) ? Number(raw) : raw;
  }
  return out;
}

export function metaLine(item) {
  return item.doc_id + (item.page != null ? " p." + item.page : "") + " · " + item.modality + (item.score != null ? " · " + num(item.score) : "");
}

export function SearchPanel({ hidden, collection }) {
  const [form, setForm] = useState({ query: "", retriever: "hybrid", k: 10, modality: "all", doc_type: "", page: "", meta: "", dedupe: false });
  const [image, setImage] = useState(null);
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  // Functional updates: several controls may change before the next render.
  const set = (name) => (e) => {
    const value = e.currentTarget.type === "checkbox" ? e.currentTarget.checked : e.currentTarget.value;
    setForm((old) => Object.assign({}, old, { [name]: value }));
  };

  async function search(e) {
    e.preventDefault();
    const body = { collection: collection || undefined, k: Number(form.k) || 10, retriever: form.retriever, modality: form.modality, dedupe: form.dedupe };
    if (form.query.trim()) body.query = form.query.trim();
    if (image) body.image = await readFile(image);
    if (!body.query && !body.image) { setError("type a query or choose an image"); return; }
    const filters = {};
    if (form.doc_type) filters.doc_type = form.doc_type;
    if (form.page) filters.page = Number(form.page);
    const meta = parseMeta(form.meta);
    if (Object.keys(meta).length) filters.metadata = meta;
    if (Object.keys(filters).length) body.filters = filters;
    setBusy(true);
    setError(null);
    try {
      setResult(await (await postJson("/v1/search", body)).json());
    } catch (err) {
      setResult(null);
      setError(err.message);
    } finally {
      setBusy(false);
    }
  }

  return html`
    <section id="search-panel" class="panel" hidden=${hidden} aria-label="Search">
      <form id="search-form" onSubmit=${search}>
        <input id="query" type="search" placeholder="e.g. a red circle" aria-label="Search text" value=${form.query} onInput=${set("query")} />
        <label class="file">or an image <input id="image" type="file" accept="image/*" onChange=${(e) => setImage(e.currentTarget.files[0] || null)} /></label>
        <label>retriever <select id="retriever" value=${form.retriever} onChange=${set("retriever")}>
          ${["hybrid", "clip", "text", "bm25"].map((r) => html`<option value=${r}>${r}</option>`)}</select></label>
        <label>k <input id="k" type="number" min="1" max="100" value=${form.k} onInput=${set("k")} /></label>
        <label>modality <select id="modality" value=${form.modality} onChange=${set("modality")}>
          <option value="all">text and images</option><option value="text">text only</option><option value="image">images only</option></select></label>
        <fieldset class="filters"><legend>filters</legend>
          <label>type <select id="f-doc-type" value=${form.doc_type} onChange=${set("doc_type")}>
            ${DOC_TYPES.map((t) => html`<option value=${t}>${t || "any"}</option>`)}</select></label>
          <label>page <input id="f-page" type="number" min="1" value=${form.page} onInput=${set("page")} /></label>
          <label>metadata <input id="f-meta" type="text" placeholder="key=value, ..." value=${form.meta} onInput=${set("meta")} /></label>
          <label class="check"><input id="dedupe" type="checkbox" checked=${form.dedupe} onChange=${set("dedupe")} /> one hit per document</label>
        </fieldset>
        <button id="search" type="submit" disabled=${busy}>${busy ? "searching..." : "Search"}</button>
      </form>
      ${error && html`<p class="error" id="search-error">${error}</p>`}
      ${result && html`<p class="summary" id="search-summary">${result.hits.length} hits · ${result.retriever} · ${result.took_ms} ms${result.version ? " · " + result.version : ""}</p>`}
      <ol id="results">${result && result.hits.map((hit) => html`
        <li class=${"hit hit-" + hit.modality} data-doc-id=${hit.doc_id} data-doc-type=${hit.metadata.doc_type || ""}>
          <div class="meta">${metaLine(hit)}</div>
          ${hit.image_uri && html`<${Thumb} uri=${hit.image_uri} alt=${hit.doc_id} />`}
          ${hit.text && html`<div class="text">${hit.text}</div>`}
          <details><summary>metadata</summary><${Meta} data=${hit.metadata} /></details>
        </li>`)}</ol>
    </section>`;
}
