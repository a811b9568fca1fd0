// Builds the knowledge-base UI into the Python package, which serves it at / (src/mmrag/http/ui.py).
import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

export default defineConfig({
  root: fileURLToPath(new URL(".", import.meta.url)),
  base: "/ui/",
  build: {
    outDir: process.env.MMRAG_UI_OUT || fileURLToPath(new URL("../src/mmrag/http/static/ui", import.meta.url)),
    emptyOutDir: true,
    // The page's CSP allows no inline script: keep everything in the hashed files.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: false,
  },
});
