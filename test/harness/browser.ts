/**
 * Real Chromium for browser tests: Debian's /usr/bin/chromium driven by playwright-core.
 * Without it a browser test file prints SKIPPED and skips (and fails under CI).
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { provides, requirementMissing } from './requirements.js';

export const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Whether Chromium is here; says SKIPPED when not, and throws under CI, where it must be. */
export function haveChromium(): boolean {
  if (existsSync(CHROMIUM)) return true;
  requirementMissing(`Chromium (${CHROMIUM})`, provides('chromium'));
  return false;
}

/**
 * A headless browser with its profile under `dir`, at 1280 × 800, and its page; page errors
 * and console errors (but those matching `ignore`) are collected into `errors`.
 */
export async function openBrowser(dir: string, errors: string[], ignore?: RegExp): Promise<{ ctx: BrowserContext; page: Page }> {
  const ctx = await chromium.launchPersistentContext(join(dir, 'chromium'), { executablePath: CHROMIUM, headless: true, args: FLAGS, viewport: { width: 1280, height: 800 } });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.setDefaultTimeout(15_000);
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !(ignore?.test(m.text()) ?? false)) errors.push(`console.error: ${m.text()}`);
  });
  return { ctx, page };
}
