// The console's page: TypeScript modules bundled by Vite into dist/, which the gateway
// serves at /console/ (no server of its own, nothing fetched from elsewhere at run time).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // One script and one stylesheet, named by content: the gateway caches them for long.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    target: "es2022",
  },
});
