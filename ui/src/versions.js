// The live version and the others, the probes and their last rounds, and drift.
import { useEffect, useState } from "preact/hooks";
import { enc, getJson } from "./api.js";
import { html, num, when } from "./html.js";

function load(path, set) {
  return getJson(path).then((d) => set({ data: d }), (e) => set({ error: e.message }));
}

function Drift({ drift }) {
  if (drift.error) return html`<p class="error">drift: ${drift.error}</p>`;
  const d = drift.data;
  const rows = (kind, map) => Object.values(map).map((m) => html`
    <tr><td>${kind}</td><td>${m.modality}</td><td>${num(m.score)}</td><td>${m.n_reference}</td><td>${m.n_recent}</td><td>${m.note}</td></tr>`);
  return html`
    <div id="drift" class=${d.drifted ? "drifted" : "steady"}>
      <h3>Drift of ${d.version}: ${d.drifted ? "drifted" : "no drift"} (threshold ${num(d.threshold, 2)})</h3>
      <table><thead><tr><th>of</th><th>modality</th><th>score</th><th>reference</th><th>recent</th><th></th></tr></thead>
        <tbody>${rows("documents", d.documents)}${rows("queries", d.queries)}</tbody></table>
    </div>`;
}

function Probes({ probes }) {
  if (probes.error) return html`<p class="error">probes: ${probes.error}</p>`;
  const p = probes.data;
  return html`
    <div id="probes">
      <h3>Probes <small>${p.interval_minutes ? "every " + p.interval_minutes + " min" : "not run by this server"}</small></h3>
      ${p.probes.length ? html`<ul>${p.probes.map((x) => html`<li class="probe"><code>${x.name}</code> “${x.query}” → ${x.expect.join(", ")} in top ${x.k}</li>`)}</ul>`
        : html`<p>No probes yet: add one with <code>mmrag probes add</code>.</p>`}
      ${p.last_runs.map((r) => html`<p class=${"probe-round " + (r.failed.length ? "failed" : "passed")}>${r.version}: recall ${num(r.recall)},
        ${r.failed.length ? "failed: " + r.failed.join(", ") : "all passed"} · p50 ${num(r.p50_latency_ms, 1)} ms · ${when(r.at)}</p>`)}
    </div>`;
}

export function VersionsPanel({ hidden, collection, tick, active }) {
  const [versions, setVersions] = useState(null);
  const [probes, setProbes] = useState(null);
  const [drift, setDrift] = useState(null);
  const [n, setN] = useState(0);

  useEffect(() => {
    if (!active || !collection) return;
    const c = enc(collection);
    setVersions(null); setProbes(null); setDrift(null);
    load("/v1/collections/" + c + "/versions", setVersions);
    load("/v1/collections/" + c + "/probes", setProbes);
    load("/v1/collections/" + c + "/drift", setDrift);
  }, [active, collection, tick, n]);

  return html`
    <section id="versions-panel" class="panel" hidden=${hidden} aria-label="Versions">
      <div class="toolbar"><h2>Versions of ${collection || "(no collection)"}</h2>
        <button id="refresh-versions" type="button" onClick=${() => setN(n + 1)}>refresh</button></div>
      ${versions && versions.error && html`<p class="error">${versions.error}</p>`}
      ${versions && versions.data && html`
        <p id="live">Live: <strong>${versions.data.live || "none"}</strong></p>
        <table id="versions"><thead><tr><th>version</th><th>state</th><th>created</th><th>built with</th><th>figures</th></tr></thead>
          <tbody>${versions.data.versions.map((v) => html`
            <tr class=${"version" + (v.live ? " live" : "")} data-label=${v.label}>
              <td>${v.label}${v.live ? " (live)" : ""}</td><td>${v.state}</td><td>${when(v.created_at)}</td>
              <td><code>${JSON.stringify(v.settings)}</code></td><td><code>${JSON.stringify(v.figures)}</code></td>
            </tr>`)}</tbody></table>
        ${versions.data.events.length ? html`<h3>Switches</h3><ul id="events">${versions.data.events.map((e) => html`<li>${JSON.stringify(e)}</li>`)}</ul>` : null}`}
      ${probes && html`<${Probes} probes=${probes} />`}
      ${drift && html`<${Drift} drift=${drift} />`}
    </section>`;
}
