// The mmrag knowledge-base UI: connection, collection choice and the tabs. Preact with htm (tagged
// templates, no JSX step): every interpolated value becomes a text node or an attribute value, so
// text from the index is escaped everywhere; no markup is ever parsed from a string.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { getJson, state } from "./api.js";
import { AskPanel } from "./ask.js";
import { DocumentsPanel } from "./documents.js";
import { html } from "./html.js";
import { ReportsPanel } from "./reports.js";
import { SearchPanel } from "./search.js";
import { VersionsPanel } from "./versions.js";
import "./style.css";

const TABS = [
  ["documents", "Documents"],
  ["search", "Search"],
  ["ask", "Ask"],
  ["versions", "Versions"],
  ["reports", "Eval reports"],
];

// Connects in flight: only the latest one's answer is shown (the key-less one at load may end last).
const attempts = { n: 0 };

function App() {
  const [key, setKey] = useState("");
  const [status, setStatus] = useState({ text: "", error: false });
  const [collections, setCollections] = useState([]);
  const [collection, setCollection] = useState("");
  const [tab, setTab] = useState("documents");
  const [connected, setConnected] = useState(false);
  const [tick, setTick] = useState(0); // bumped after an upload: panels reload what they show

  async function connect(quiet) {
    state.key = key.trim();
    const attempt = ++attempts.n;
    if (!quiet) setStatus({ text: "connecting...", error: false });
    try {
      const data = await getJson("/v1/collections");
      if (attempt !== attempts.n) return; // a later connect (a new key) has the say
      setCollections(data.collections);
      setConnected(true);
      const names = data.collections.map((c) => c.name);
      if (!names.includes(collection)) setCollection(names[0] || "");
      setStatus(names.length ? { text: "connected", error: false }
        : { text: "connected; no collection yet: upload documents to create one", error: false });
    } catch (e) {
      if (attempt !== attempts.n) return;
      setConnected(false);
      // Without a key on a server with keys on: say what to do, not just 401.
      setStatus({ text: quiet ? "enter an API key (mmrag keys create NAME --scope read --scope write)" : e.message, error: !quiet });
    }
  }

  useEffect(() => { connect(true); }, []);

  function changed() {
    setTick((t) => t + 1);
    connect(true);
  }

  const current = collections.find((c) => c.name === collection);
  return html`
    <header>
      <h1>mmrag</h1>
      <form id="connect" onSubmit=${(e) => { e.preventDefault(); connect(false); }}>
        <label>API key <input id="key" type="password" autocomplete="off" spellcheck="false" placeholder="mmrag_..."
          value=${key} onInput=${(e) => setKey(e.currentTarget.value)} /></label>
        <button id="load" type="submit">Connect</button>
        <label>Collection
          <select id="collection" disabled=${!collections.length} value=${collection}
            onChange=${(e) => setCollection(e.currentTarget.value)}>
            ${collections.length ? collections.map((c) => html`<option value=${c.name}>${c.name} (${c.documents} documents)</option>`)
              : html`<option value="">(none)</option>`}
          </select>
        </label>
        ${current && html`<span class="sizes">${current.text_records} chunks · ${current.clip_records} CLIP records</span>`}
        <span id="status" role="status" class=${status.error ? "error" : ""}>${status.text}</span>
      </form>
      <p class="hint">Your API key stays in this page: it is sent only with the API calls, never stored.</p>
    </header>
    <nav role="tablist">
      ${TABS.map(([id, label]) => html`
        <button id=${"tab-" + id} role="tab" type="button" aria-selected=${tab === id ? "true" : "false"}
          class=${tab === id ? "active" : ""} onClick=${() => setTab(id)}>${label}</button>`)}
    </nav>
    <main>
      <${DocumentsPanel} hidden=${tab !== "documents"} connected=${connected} collection=${collection} tick=${tick}
        onUploaded=${changed} onCollection=${setCollection} />
      <${SearchPanel} hidden=${tab !== "search"} collection=${collection} />
      <${AskPanel} hidden=${tab !== "ask"} collection=${collection} />
      <${VersionsPanel} hidden=${tab !== "versions"} collection=${collection} tick=${tick} active=${tab === "versions"} />
      <${ReportsPanel} hidden=${tab !== "reports"} active=${tab === "reports"} connected=${connected} />
    </main>`;
}

render(html`<${App} />`, document.getElementById("app"));
