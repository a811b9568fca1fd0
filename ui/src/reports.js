// Evaluation reports the server finds under <data_dir>/reports/ (mmrag eval run ... --out there).
import { useEffect, useState } from "preact/hooks";
import { getJson } from "./api.js";
import { html, num } from "./html.js";

export function ReportsPanel({ hidden, active, connected }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    if (!active || !connected) return;
    getJson("/v1/eval/reports").then((d) => { setData(d); setError(null); }, (e) => setError(e.message));
  }, [active, connected]);
  return html`
    <section id="reports-panel" class="panel" hidden=${hidden} aria-label="Evaluation reports">
      <h2>Evaluation reports</h2>
      ${error && html`<p class="error">${error}</p>`}
      ${data && !data.reports.length && html`<p id="no-reports">No reports yet. Write one where the server looks:
        <code>mmrag eval run DATASET.jsonl --out DATA_DIR/${data.folder}/NAME</code>.</p>`}
      ${data && data.reports.map((r) => html`
        <article class="report" data-name=${r.name}>
          <h3>${r.name} <small>${r.dataset} · ${r.created}</small></h3>
          <table><thead><tr><th>metric</th><th>mean</th><th>n</th><th>by</th></tr></thead>
            <tbody>${Object.entries(r.metrics).map(([name, m]) => html`
              <tr><td>${name}</td><td>${num(m.mean, 4)}</td><td>${m.n}</td><td>${m.producer}</td></tr>`)}</tbody></table>
        </article>`)}
      ${data && data.unreadable.length ? html`<p class="error">unreadable: ${data.unreadable.join("; ")}</p>` : null}
    </section>`;
}
