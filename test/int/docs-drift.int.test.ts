/**
 * Docs that cannot drift. Every `capstan` command and flag the docs name (README, docs/, each
 * package's README, and the CLI's own usage text) is asked of the CLI itself: the command's
 * `--help` prints the flags from the very table it parses with, so a command or flag that
 * does not exist fails here, with the file and line that names it. And the architecture
 * page lists every service package, the README's layout every service directory.
 *
 * Nothing here is a list of commands or packages: both are discovered, so what is added
 * later is checked the same way.
 */
import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { PROJECT_ROOT } from '@capstan/kit';

const CLI = join(PROJECT_ROOT, 'services', 'cli', 'dist', 'main.js');
/** Help requests at once: each is a node process. */
const PARALLEL = 2;

interface Mention {
  /** `file:line`. */
  readonly where: string;
  readonly text: string;
  /** The words before the first flag: the command, a subcommand, arguments. */
  readonly words: readonly string[];
  readonly flags: readonly string[];
}

interface Help {
  readonly code: number | null;
  readonly out: string;
  readonly flags: ReadonlySet<string>;
}

function cli(args: readonly string[]): Promise<Help> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { env: { ...process.env, NO_COLOR: '1' }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      const flags = new Set([...stdout.matchAll(/^ {2}(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1] as string));
      resolve({ code, out: `${stdout}${stderr}`, flags });
    });
  });
}

/** Every markdown file of the project's own (not dependencies, builds or test artifacts). */
function markdownFiles(dir = PROJECT_ROOT): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name.startsWith('.') || ['node_modules', 'dist', 'artifacts'].includes(e.name)) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...markdownFiles(p));
    else if (e.name.endsWith('.md')) out.push(p);
  }
  return out;
}

/** The code in a markdown text, by line: fenced blocks whole, inline code spans alone. */
function codeOf(text: string): { line: number; code: string }[] {
  const out: { line: number; code: string }[] = [];
  let fenced = false;
  text.split('\n').forEach((l, i) => {
    if (/^\s*```/.test(l)) {
      fenced = !fenced;
      return;
    }
    if (fenced) out.push({ line: i + 1, code: l });
    else for (const m of l.matchAll(/`([^`]+)`/g)) out.push({ line: i + 1, code: m[1] as string });
  });
  return out;
}

/**
 * The `capstan …` commands in a piece of code: each runs to the next one, or to a comment,
 * `;`, `&&` or a shell pipe. `a|b` offers alternatives; brackets and parentheses are syntax.
 */
function mentionsIn(where: string, code: string): Mention[] {
  const out: Mention[] = [];
  // Not a path, a package, a variable or a quoted string ("capstan sealed-box v1" is a label).
  const starts = [...code.matchAll(/(?<![\w@./$"'-])capstan (?=[a-z])/g)].map((m) => (m.index ?? 0) + m[0].length);
  starts.forEach((start, i) => {
    let text = code.slice(start, starts[i + 1] ?? code.length);
    text = text.split(/\s#|;|&&|\s\|\s(?![-<[])/)[0] as string;
    const tokens = text
      .replace(/[[\]()]/g, ' ')
      .split(/\s+/)
      .filter(Boolean);
    const firstFlag = tokens.findIndex((tk) => tk.startsWith('-'));
    const words = (firstFlag < 0 ? tokens : tokens.slice(0, firstFlag)).filter((w) => !w.startsWith("'") && w !== '…' && w !== '<');
    const flags = [...new Set(tokens.flatMap((tk) => /^--[a-z][a-z0-9-]*/.exec(tk)?.[0] ?? []))];
    // Alternatives (`approve|revoke`) in the command's words: each one is a command.
    const expand = (ws: readonly string[]): string[][] => {
      const [w, ...rest] = ws;
      if (w === undefined) return [[]];
      const tails = expand(rest);
      const alts = /^[a-z][a-z-]*(\|[a-z][a-z-]*)+$/.test(w) ? w.split('|') : [w];
      return alts.flatMap((a) => tails.map((t) => [a, ...t]));
    };
    for (const ws of expand(words.slice(0, 2))) out.push({ where, text: `capstan ${text.trim()}`, words: ws, flags });
  });
  return out;
}

/** The CLI's usage text as code: each command with its continuation lines. */
function usageMentions(usage: string): Mention[] {
  const out: Mention[] = [];
  let block: string[] = [];
  const flush = () => {
    if (block.length > 0) out.push(...mentionsIn('capstan --help', block.join(' ')));
    block = [];
  };
  for (const l of usage.split('\n')) {
    if (/^ {2}capstan /.test(l)) {
      flush();
      block.push(l);
    } else if (/^ {3,}\S/.test(l) && block.length > 0) block.push(l);
    else flush();
  }
  flush();
  return out;
}

async function allMentions(): Promise<Mention[]> {
  const found: Mention[] = [];
  for (const file of markdownFiles()) {
    for (const { line, code } of codeOf(readFileSync(file, 'utf8'))) found.push(...mentionsIn(`${relative(PROJECT_ROOT, file)}:${line}`, code));
  }
  const usage = await cli(['--help']);
  expect(usage.code).toBe(0);
  found.push(...usageMentions(usage.out));
  return found;
}

describe('docs that cannot drift', () => {
  it('docs - every capstan command and flag the docs name exists: asked of the CLI', async () => {
    const mentions = await allMentions();
    const asked = new Map<string, Promise<Help>>();
    const ask = (args: readonly string[]) => {
      const key = JSON.stringify(args);
      let p = asked.get(key);
      if (!p) asked.set(key, (p = cli(args)));
      return p;
    };
    /**
     * A command's help: its own (`usage: …`) when it has no subcommands, else the
     * subcommand's; asked again with the mention's flags when they are not all there, as
     * some flags choose the command (`status --system`). `--help` is seen before any flag
     * is checked.
     */
    const helpFor = async (m: Mention): Promise<Help> => {
      const top = await ask([m.words[0] ?? '', '--help']);
      if (top.code !== 0) return top;
      const h = top.out.startsWith('usage:') ? top : await ask([...m.words, '--help']);
      return h.code === 0 && m.flags.some((f) => !h.flags.has(f)) ? ask([...m.words, ...m.flags, '--help']) : h;
    };
    const problems: string[] = [];
    const queue = [...mentions];
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        for (let m = queue.shift(); m !== undefined; m = queue.shift()) {
          const help = await helpFor(m);
          if (help.code !== 0) {
            problems.push(`${m.where}: \`${m.text}\`: the CLI does not know \`capstan ${m.words.join(' ')}\`: ${help.out.trim().split('\n')[0] ?? ''}`);
            continue;
          }
          for (const f of m.flags) if (!help.flags.has(f)) problems.push(`${m.where}: \`${m.text}\`: \`capstan ${m.words.join(' ')}\` has no flag ${f}`);
        }
      }),
    );
    const files = new Set(mentions.map((m) => m.where.split(':')[0]));
    process.stdout.write(`docs: ${mentions.length} capstan commands named in ${files.size} files, ${asked.size} asked of the CLI, ${problems.length} problems\n`);
    expect(problems).toEqual([]);
    // The scan itself must find what it is for.
    expect(mentions.length).toBeGreaterThan(50);
  }, 180_000);

  it('docs - a command or flag that does not exist is found (the check can fail)', async () => {
    const made = mentionsIn('here:1', 'npx capstan runs --tenant demo --colour red   # or: capstan frobnicate --now');
    expect(made.map((m) => [m.words, m.flags])).toEqual([
      [['runs'], ['--tenant', '--colour']],
      [['frobnicate'], ['--now']],
    ]);
    const runs = await cli(['runs', '--help']);
    expect(runs.code).toBe(0);
    expect(runs.flags.has('--tenant')).toBe(true);
    expect(runs.flags.has('--colour')).toBe(false);
    expect((await cli(['frobnicate', '--help'])).code).toBe(2);
    expect(mentionsIn('x:1', 'capstan workers approve|revoke <workerId> --tenant <t>').map((m) => m.words)).toEqual([
      ['workers', 'approve'],
      ['workers', 'revoke'],
    ]);
  });

  it('docs - docs/ARCHITECTURE.md lists every service package, the README every service directory', () => {
    const architecture = readFileSync(join(PROJECT_ROOT, 'docs', 'ARCHITECTURE.md'), 'utf8');
    const readme = readFileSync(join(PROJECT_ROOT, 'README.md'), 'utf8');
    const packages = readdirSync(join(PROJECT_ROOT, 'services'))
      .filter((d) => existsSync(join(PROJECT_ROOT, 'services', d, 'package.json')))
      .map((d) => ({ dir: `services/${d}/`, name: (JSON.parse(readFileSync(join(PROJECT_ROOT, 'services', d, 'package.json'), 'utf8')) as { name: string }).name }));
    const tableRow = (text: string, dir: string) => text.split('\n').find((l) => l.startsWith('|') && l.includes(`\`${dir}\``));
    const missing = [
      ...packages.filter((p) => !tableRow(architecture, p.dir)?.includes(`\`${p.name}\``)).map((p) => `docs/ARCHITECTURE.md has no package row for ${p.dir} (${p.name})`),
      ...packages.filter((p) => !tableRow(readme, p.dir)).map((p) => `README.md's layout has no row for ${p.dir}`),
    ];
    process.stdout.write(`docs: ${packages.length} service packages, ${missing.length} missing from the docs\n`);
    expect(packages.length).toBeGreaterThan(5);
    expect(missing).toEqual([]);
  });
});
