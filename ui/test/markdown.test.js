// node --test ui/test: the Markdown renderer turns every token into an element or a text node.
import assert from "node:assert/strict";
import { test } from "node:test";
import { renderMarkdown } from "../src/markdown.js";

// Every element type and every text, depth first, from Preact vnodes.
function walk(node, out = { tags: [], text: [], props: [] }) {
  if (node == null || node === false || node === true) return out;
  if (Array.isArray(node)) { node.forEach((n) => walk(n, out)); return out; }
  if (typeof node === "string" || typeof node === "number") { out.text.push(String(node)); return out; }
  out.tags.push(node.type);
  out.props.push(node.props);
  walk(node.props.children, out);
  return out;
}

test("markup in an answer stays text, Markdown becomes elements", () => {
  const got = walk(renderMarkdown("## Hours\n\nThe **lobby** opens at `08:00` <script>window.x=1</script>\n\n<img src=x onerror=y>\n\n- one\n- two"));
  assert.deepEqual(got.tags.filter((t) => ["script", "img", "iframe"].includes(t)), []);
  for (const tag of ["h4", "strong", "code", "ul", "li"]) assert.ok(got.tags.includes(tag), tag);
  const text = got.text.join("");
  assert.ok(text.includes("<script>") && text.includes("window.x=1") && text.includes("<img src=x onerror=y>"), text);
  assert.ok(!text.includes("**") && !text.includes("##"), text);
  assert.ok(got.props.every((p) => !("dangerouslySetInnerHTML" in p)));
});

test("only http(s) and mailto links become links; images are never loaded", () => {
  const got = walk(renderMarkdown("[a](javascript:alert(1)) [b](https://example.org/x) [c](data:text/html,hi) ![d](https://example.org/p.png)"));
  const links = got.props.filter((p, i) => got.tags[i] === "a");
  assert.deepEqual(links.map((p) => p.href), ["https://example.org/x"]);
  assert.equal(links[0].rel, "noopener noreferrer nofollow");
  assert.ok(!got.tags.includes("img"));
  assert.ok(got.text.join("").includes("[image: d]"));
});

test("citation markers go through the decorator, in text runs only", () => {
  const seen = [];
  renderMarkdown("Open at 08:00 [1], closed **Sundays [2]**.", (t) => { seen.push(t); return [t]; });
  assert.ok(seen.some((t) => t.includes("[1]")) && seen.some((t) => t.includes("[2]")), seen);
});
