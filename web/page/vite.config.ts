// Builds the page that `tally serve` embeds. `npm run dev` serves it from Vite against a running
// server named by VITE_SERVER_URL (start that server with `--allow-origin http://localhost:5173`).
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // The server's Content-Security-Policy allows no inline script, so no asset may be inlined
    // as a data: module either.
    assetsInlineLimit: 0,
    sourcemap: false,
    // Two pages of one build, sharing their code: the counter page at `/` and the admin page,
    // which the server serves at `/admin` (paths from this folder, where `npm run build` runs).
    rollupOptions: { input: { index: "index.html", admin: "admin.html" } },
  },
  server: { port: 5173, strictPort: true },
});
