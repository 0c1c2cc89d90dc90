// Vite builds the console's web UI into services/console/dist/web, which the console server
// serves. `npm run dev:web -w @capstan/console` serves it with hot reload and forwards /api to
// a running console (CONSOLE_URL, default http://127.0.0.1:4335).
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

const here = fileURLToPath(new URL('.', import.meta.url));
const api = process.env['CONSOLE_URL'] ?? 'http://127.0.0.1:4335';

export default defineConfig({
  root: here,
  base: '/',
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL('../dist/web', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: true,
    reportCompressedSize: false,
  },
  server: { proxy: { '/api': { target: api, changeOrigin: false } } },
});
