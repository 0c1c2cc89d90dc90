/**
 * The built web UI (static files), client-side routes (any other page path answers
 * index.html), security headers on every answer, and the JSON 404 for unknown API paths.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import fastifyStatic from '@fastify/static';
import { ApiErrorCode } from './api-types.js';
import { HttpError, sendError } from './http.js';

// React sets style attributes, hence 'unsafe-inline' for styles only; scripts come from
// the console's own files and nowhere else.
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "object-src 'none'",
].join('; ');

const NOT_BUILT = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Capstan console</title></head>
<body style="font-family: system-ui, sans-serif; margin: 3rem; max-width: 40rem">
<h1>Capstan console</h1><p>The web UI is not built. Build it with <code>npm run build:web -w @capstan/console</code>
and reload. The JSON API under <code>/api</code> is running.</p></body></html>`;

export function isApiPath(path: string): boolean {
  return path === '/api' || path.startsWith('/api/') || path === '/healthz';
}

export async function registerWeb(app: FastifyInstance, webDir: string): Promise<void> {
  app.addHook('onSend', async (req, reply, payload) => {
    reply.header('x-content-type-options', 'nosniff');
    // Sign-in links carry their token in the URL: it must not travel on in a Referer.
    reply.header('referrer-policy', 'no-referrer');
    reply.header('x-frame-options', 'DENY');
    reply.header('content-security-policy', CSP);
    if (isApiPath(req.url.split('?', 1)[0] as string) && !reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    return payload;
  });

  const built = existsSync(join(webDir, 'index.html'));
  if (built) {
    await app.register(fastifyStatic, {
      root: webDir,
      wildcard: true,
      index: ['index.html'],
      // Vite names bundles by content hash: those never change; pages are revalidated.
      setHeaders: (res, path) => {
        res.header('cache-control', path.startsWith(join(webDir, 'assets')) ? 'public, max-age=31536000, immutable' : 'no-cache');
      },
    });
  }

  app.setNotFoundHandler(async (req, reply) => {
    const path = req.url.split('?', 1)[0] as string;
    if (isApiPath(path) || (req.method !== 'GET' && req.method !== 'HEAD')) {
      return sendError(reply, new HttpError(ApiErrorCode.NotFound, `no such endpoint: ${req.method} ${path.slice(0, 200)}`));
    }
    // A missing file (an old bundle name) is a 404, not the app's shell served as script.
    if (/\.(?:js|mjs|css|map|png|jpe?g|gif|svg|ico|webp|woff2?|ttf|json|txt|webmanifest)$/i.test(path)) return reply.code(404).type('text/plain; charset=utf-8').send('not found');
    if (!built) return reply.code(503).type('text/html; charset=utf-8').header('cache-control', 'no-store').send(NOT_BUILT);
    // A client-side route (/runs/…, /signin): the app's shell, which routes in the browser.
    return reply.header('cache-control', 'no-cache').type('text/html; charset=utf-8').sendFile('index.html');
  });
}
