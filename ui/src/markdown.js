// Markdown to Preact nodes, safe by construction: `marked` only tokenises, and every token becomes
// an element or a text node. No HTML string is ever parsed, so raw HTML in an answer (or a chunk)
// shows as the text it is. Links keep only http(s) and mailto targets.
import { Lexer } from "marked";
import { h } from "preact";

const SAFE_LINK = /^(https?:|mailto:)/i;

// `decorate(text)` turns a plain text run into nodes (citation links, marked statements).
export function renderMarkdown(source, decorate) {
  const plain = decorate || ((text) => [text]);
  const tokens = new Lexer({ gfm: true, breaks: false }).lex(source || "");
  return blocks(tokens, plain);
}

function blocks(tokens, plain) {
  return tokens.map((t, i) => block(t, plain, i));
}

function block(t, plain, key) {
  switch (t.type) {
    case "heading":
      return h("h" + Math.min(6, Math.max(3, t.depth + 2)), { key }, inline(t.tokens, plain));
    case "paragraph":
      return h("p", { key }, inline(t.tokens, plain));
    case "text":
      return h("p", { key }, t.tokens ? inline(t.tokens, plain) : plain(t.text));
    case "code":
      return h("pre", { key }, h("code", null, t.text));
    case "blockquote":
      return h("blockquote", { key }, blocks(t.tokens, plain));
    case "list":
      return h(t.ordered ? "ol" : "ul", { key, start: t.ordered && t.start !== 1 ? t.start : undefined },
        t.items.map((item, j) => h("li", { key: j }, listItem(item, plain))));
    case "table":
      return h("table", { key },
        h("thead", null, h("tr", null, t.header.map((c, j) => h("th", { key: j }, inline(c.tokens, plain))))),
        h("tbody", null, t.rows.map((row, r) => h("tr", { key: r }, row.map((c, j) => h("td", { key: j }, inline(c.tokens, plain)))))));
    case "hr":
      return h("hr", { key });
    case "space":
      return null;
    default: // html and anything unknown: its source, as text
      return h("p", { key }, plain(t.raw || ""));
  }
}

function listItem(item, plain) {
  // A tight list item holds one text token: show it inline, not as a paragraph.
  return item.tokens.map((t, i) => (t.type === "text" && t.tokens ? h("span", { key: i }, inline(t.tokens, plain)) : block(t, plain, i)));
}

function inline(tokens, plain) {
  return (tokens || []).map((t, i) => {
    switch (t.type) {
      case "text": // inside raw HTML marked flags its text "escaped": the source is what was written
        return h("span", { key: i }, t.tokens ? inline(t.tokens, plain) : plain(t.escaped ? t.raw : t.text));
      case "escape":
        return h("span", { key: i }, plain(t.text));
      case "strong":
        return h("strong", { key: i }, inline(t.tokens, plain));
      case "em":
        return h("em", { key: i }, inline(t.tokens, plain));
      case "del":
        return h("del", { key: i }, inline(t.tokens, plain));
      case "codespan":
        return h("code", { key: i }, t.text);
      case "br":
        return h("br", { key: i });
      case "link":
        return SAFE_LINK.test(t.href || "")
          ? h("a", { key: i, href: t.href, rel: "noopener noreferrer nofollow", target: "_blank" }, inline(t.tokens, plain))
          : h("span", { key: i }, inline(t.tokens, plain));
      case "image": // never loaded: an answer must not make the browser fetch anything
        return h("span", { key: i, class: "md-image" }, "[image: " + (t.text || t.href || "") + "]");
      default: // inline html and the rest: as text
        return h("span", { key: i }, plain(t.raw || ""));
    }
  });
}
