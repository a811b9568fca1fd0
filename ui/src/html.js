// htm bound to Preact's h: html`<p>${text}</p>` puts `text` in as a text node, never as markup.
import htm from "htm";
import { h } from "preact";
import { useEffect, useState } from "preact/hooks";
import { blobUrl } from "./api.js";

export const html = htm.bind(h);

export function when(ts) {
  return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "";
}

export function num(value, digits = 3) {
  return value == null ? "—" : typeof value === "number" ? value.toFixed(digits) : String(value);
}

// An image served by the API (fetched with the key, shown from a blob: URL).
export function Thumb({ uri, alt }) {
  const [src, setSrc] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    blobUrl(uri).then((u) => live && setSrc(u), (e) => live && setError(e.message));
    return () => { live = false; };
  }, [uri]);
  if (error) return html`<span class="thumb-error">${alt} (${error})</span>`;
  return src ? html`<img class="thumb" src=${src} alt=${alt} />` : html`<span class="thumb loading">loading image</span>`;
}

// Metadata as a definition list (values as text).
export function Meta({ data, skip }) {
  const hidden = new Set(skip || []);
  const entries = Object.entries(data || {}).filter(([k]) => !hidden.has(k)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (!entries.length) return null;
  return html`<dl class="metadata">${entries.map(([k, v]) => html`<dt>${k}</dt><dd>${typeof v === "object" ? JSON.stringify(v) : String(v)}</dd>`)}</dl>`;
}
