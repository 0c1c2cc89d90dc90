/**
 * What tests need from the machine beyond Node: a Docker engine, Chromium, openssl. `npm test`
 * provisions them (infra/provision.mjs) where the user may install and start things; where
 * not, a test that needs one skips, naming what is missing and how to get it. Under CI a
 * missing requirement is an error, never a skip: CI must test everything. The run's skip
 * count is printed and checked by `skip-report.ts`.
 */

/** One line a skip prints: what is missing, and the command that gets it. */
export function requirementMissing(what: string, how: string): string {
  const line = `SKIPPED: ${what} is missing: ${how}`;
  if (process.env['CI'] && process.env['CI'] !== 'false') throw new Error(`${line} (CI needs it)`);
  process.stdout.write(`${line}\n`);
  return line;
}

/** How `npm test` would have provided a system package. */
export const provides = (pkg: string) => `\`npm test\` installs it as root or with passwordless sudo; else \`sudo apt-get install ${pkg}\``;
