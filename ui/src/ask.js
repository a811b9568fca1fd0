// Ask: the answer streams in as plain text, then shows as Markdown with [n] links to its citations,
// statements the verifier could not support marked, and an abstention's reason.
import { h } from "preact";
import { useState } from "preact/hooks";
import { events, postJson } from "./api.js";
import { html, num, Thumb } from "./html.js";
import { renderMarkdown } from "./markdown.js";
import { metaLine } from "./search.js";

function selectCitation(n) {
  for (const node of document.querySelectorAll(".citation.selected")) node.classList.remove("selected");
  const target = document.getElementById("cite-" + n);
  if (target) { target.classList.add("selected"); target.scrollIntoView({ block: "nearest" }); }
}

// A text run -> text, citation links for known [n], and <mark> around unsupported statements.
function decorator(result) {
  const known = new Set(result.citations.map((c) => c.n));
  const flagged = ((result.verification && result.verification.unsupported) || []).map((u) => u).filter((u) => u.text);
  const cites = (text) => {
    const out = [];
    const re = /\[(\d+)\]/g;
    let last = 0;
    let m;
    while ((m = re.exec(text))) {
      out.push(text.slice(last, m.index));
      const n = Number(m[1]);
      out.push(known.has(n)
        ? h("a", { class: "cite", href: "#cite-" + n, "data-n": String(n), onClick: (e) => { e.preventDefault(); selectCitation(n); } }, m[0])
        : m[0]);
      last = m.index + m[0].length;
    }
    out.push(text.slice(last));
    return out;
  };
  return (text) => {
    for (const u of flagged) {
      const at = text.indexOf(u.text);
      if (at >= 0) {
        const title = "not supported by the sources: " + (u.reasons || []).join(", ");
        return [...cites(text.slice(0, at)), h("mark", { class: "unsupported", title }, cites(u.text)), ...cites(text.slice(at + u.text.length))];
      }
    }
    return cites(text);
  };
}

// The grounding check may add a citation the model did not mark: link every one after the text.
function unmarked(result) {
  const marked = new Set([...result.answer.matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1])));
  const rest = result.citations.filter((c) => !marked.has(c.n));
  if (!rest.length) return null;
  return html`<p class="sources">sources: ${decorator(result)(rest.map((c) => "[" + c.n + "]").join(" "))}</p>`;
}

function Verdict({ result }) {
  const v = result.verification;
  if (v) {
    const bad = v.unsupported.length;
    return html`<div id="verdict" class=${bad ? "flagged" : "ok"}>
      ${bad ? "✗ " + bad + " statement(s) not supported by the sources (marked)" : "✓ verified: every statement is supported by the sources"}
      ${bad ? html`<ul>${v.unsupported.map((u) => html`<li>${u.text} <small>(${(u.reasons || []).join(", ")})</small></li>`)}</ul>` : null}
    </div>`;
  }
  return html`<div id="verdict">${result.abstained ? "abstained" : "not verified (verify was off)"}</div>`;
}

function Abstention({ result }) {
  if (!result.abstained && !result.abstention) return null;
  const a = result.abstention || {};
  return html`<div id="abstention" class=${result.abstained ? "abstained" : ""}>
    ${result.abstained ? "Abstained: " : "Answerable: "}<code>${result.guard}</code>
    ${a.p_answerable != null && html` · p(answerable) ${num(a.p_answerable)} against threshold ${num(a.threshold)}`}
  </div>`;
}

export function AskPanel({ hidden, collection }) {
  const [question, setQuestion] = useState("");
  const [mode, setMode] = useState("");
  const [verify, setVerify] = useState(true);
  const [streamed, setStreamed] = useState("");
  const [result, setResult] = useState(null);
  const [phase, setPhase] = useState("idle"); // idle | streaming | done | error
  const [error, setError] = useState(null);

  async function ask(e) {
    e.preventDefault();
    if (!question.trim()) { setError("type a question"); setPhase("error"); return; }
    setStreamed("");
    setResult(null);
    setError(null);
    setPhase("streaming");
    const body = { question: question.trim(), stream: true, collection: collection || undefined,
                   verify: verify ? "mark" : "off", answer_mode: mode || undefined };
    try {
      const response = await postJson("/v1/answer", body);
      let text = "";
      for await (const ev of events(response)) {
        if (ev.name === "delta") { text += ev.data.text; setStreamed(text); }
        else if (ev.name === "answer") setResult(ev.data);
        else if (ev.name === "done") setPhase("done");
      }
    } catch (err) {
      setError(err.message);
      setPhase("error");
    }
  }

  const cls = phase === "error" ? "error" : phase === "streaming" && !result ? "streaming" : result && result.abstained ? "abstained" : "";
  return html`
    <section id="ask-panel" class="panel" hidden=${hidden} aria-label="Ask">
      <form id="ask-form" onSubmit=${ask}>
        <input id="question" type="text" placeholder="e.g. When does the building close on weekdays?" aria-label="Question"
          value=${question} onInput=${(e) => setQuestion(e.currentTarget.value)} />
        <label>mode <select id="mode" value=${mode} onChange=${(e) => setMode(e.currentTarget.value)} title="How the answer is made">
          <option value="">server default</option><option value="extractive">extractive</option>
          <option value="generate">generate</option><option value="auto">auto</option></select></label>
        <label class="check"><input id="verify" type="checkbox" checked=${verify} onChange=${(e) => setVerify(e.currentTarget.checked)} /> verify</label>
        <button id="ask" type="submit" disabled=${phase === "streaming"}>Ask</button>
      </form>
      <div id="answer" class=${cls} aria-live="polite" data-done=${phase === "done" ? "true" : undefined}
        data-mode=${result ? result.mode : undefined}>
        ${error ? error : result ? [renderMarkdown(result.answer, decorator(result)), unmarked(result)] : streamed}
      </div>
      ${result && html`<p class="summary" id="answer-meta">${result.mode} · ${result.model} · ${result.took_ms} ms</p>`}
      ${result && html`<${Verdict} result=${result} />`}
      ${result && html`<${Abstention} result=${result} />`}
      <ol id="citations">${result && result.citations.map((c) => html`
        <li class="citation" id=${"cite-" + c.n} value=${c.n}>
          <div class="meta">[${c.n}] ${metaLine(c)}</div>
          ${c.image_uri && html`<${Thumb} uri=${c.image_uri} alt=${c.doc_id} />`}
          ${c.excerpt && html`<div class="excerpt">${c.excerpt}</div>`}
        </li>`)}</ol>
    </section>`;
}
