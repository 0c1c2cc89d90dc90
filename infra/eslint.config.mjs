// Capstan's ESLint flat config (ESLint 10 + typescript-eslint, type-aware).
//
//   npm run lint                                   (repo root: lints every package and test/)
//   eslint --config ../infra/eslint.config.mjs src (a package dir: what each package's `lint` runs)
//
// Every pattern below is anchored at the repo root (`basePath`), so the config means the
// same thing whichever directory ESLint runs from.
//
// The fence around actors/ is the point of this file: @capstan/actors folds recorded
// history and must decide exactly the same thing on every replay, so it may import only
// `xstate` and `@capstan/schemas` and may never read a clock, a random source, the
// environment or do I/O. test/unit/lint-fence.test.ts proves each rule of the fence fires.
import { dirname, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';
import reactHooks from 'eslint-plugin-react-hooks';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const SOURCES = ['schemas/src/**/*.ts', 'actors/src/**/*.ts', 'services/*/src/**/*.ts', 'services/console/web/**/*.{ts,tsx}'];
const TESTS = ['test/**/*.ts'];

// ---------------------------------------------------------------------------------------
// Shared rule values. A later config object replaces a rule's options wholesale, so the
// actors block re-uses these and adds to them rather than restating them.

/** Packages are consumed through their `exports`, never by reaching into their files. */
const deepImportPatterns = [
  {
    regex: '^@capstan/[^/]+/(src|dist)(/|$)',
    message: 'Import the package (`@capstan/<name>`), not its src/ or dist/ files: only what its index exports is its API.',
  },
];

/** Subjects and stream names are spelled in schemas/src/names.ts and nowhere else. */
const NAMES_MESSAGE = 'Spell NATS subjects and stream names only in schemas/src/names.ts: use `Subjects`, `Streams` or `Consumers` from @capstan/schemas.';
const namesSyntax = [
  { selector: 'Literal[value=/^(cap\\.|CAP_)/]', message: NAMES_MESSAGE },
  { selector: 'TemplateLiteral > TemplateElement:first-child[value.raw=/^(cap\\.|CAP_)/]', message: NAMES_MESSAGE },
];

/**
 * A service runs from its own install: it finds its own files relative to its package
 * (`import.meta.url`) and keeps its state where its config says. Where the repository
 * checkout is (kit's PROJECT_ROOT) is a question for tooling only: the tests, the benchmarks,
 * `capstan dev`.
 */
const noCheckoutPaths = [
  {
    name: '@capstan/kit',
    importNames: ['PROJECT_ROOT'],
    message: 'Runtime code does not reach into the repository checkout: resolve a package asset with import.meta.url, take a state folder from config.',
  },
];

// ---------------------------------------------------------------------------------------
// The actors fence.

const DETERMINISTIC = 'actors/ is deterministic: a run must decide the same thing on every replay.';
const TIME = `${DETERMINISTIC} Time comes from the event's \`at\` (recorded by the orchestrator), never from a clock.`;
const RANDOM = `${DETERMINISTIC} Ids and jitter must come from recorded events (or be derived from them), never from a random source.`;
const TIMERS = `${DETERMINISTIC} Waiting is a decision: emit \`timer.scheduled\` and let the orchestrator fire a durable timer.`;
const IO = `${DETERMINISTIC} It does no I/O and reads no environment; the orchestrator supplies every fact.`;

const ACTORS_ALLOWED = ['xstate', '@capstan/schemas'];
const actorsImportPatterns = [
  ...deepImportPatterns,
  {
    // Anything that is neither an allowed package nor a relative path (checked below).
    regex: `^(?!(${ACTORS_ALLOWED.map((m) => m.replace(/[/.]/g, '\\$&')).join('|')})$)(?!\\.\\.?(/|$))`,
    message: `${DETERMINISTIC} It may import only ${ACTORS_ALLOWED.map((m) => `\`${m}\``).join(' and ')}: no node:* builtins, no pg, no @nats-io/*, no pino, nothing else.`,
  },
];

/**
 * `capstan/imports-within`: relative imports (and re-exports, dynamic imports, `import('…')`
 * types) must resolve inside the given directory. no-restricted-imports cannot express
 * this, because whether `../x` escapes depends on how deep the importing file is.
 */
const importsWithin = {
  meta: {
    type: 'problem',
    docs: { description: 'Relative imports must stay inside the given directory.' },
    schema: [{ type: 'object', properties: { dir: { type: 'string' }, message: { type: 'string' } }, required: ['dir'], additionalProperties: false }],
    messages: { outside: '{{what}} resolves outside {{dir}}/. {{message}}' },
  },
  create(context) {
    const { dir, message = '' } = context.options[0];
    const fence = resolve(root, dir);
    const check = (node, source) => {
      if (!source || source.type !== 'Literal' || typeof source.value !== 'string') return;
      const spec = source.value;
      if (spec !== '.' && spec !== '..' && !spec.startsWith('./') && !spec.startsWith('../')) return;
      const target = resolve(dirname(context.filename), spec);
      if (target === fence || target.startsWith(fence + sep)) return;
      context.report({ node: source, messageId: 'outside', data: { what: `'${spec}'`, dir: relative(root, fence), message } });
    };
    return {
      ImportDeclaration: (n) => check(n, n.source),
      ExportNamedDeclaration: (n) => check(n, n.source),
      ExportAllDeclaration: (n) => check(n, n.source),
      ImportExpression: (n) => check(n, n.source),
      TSImportType: (n) => check(n, n.argument?.type === 'TSLiteralType' ? n.argument.literal : n.source),
      TSExternalModuleReference: (n) => check(n, n.expression),
    };
  },
};

const capstan = { meta: { name: 'capstan' }, rules: { 'imports-within': importsWithin } };

// ---------------------------------------------------------------------------------------

const configs = defineConfig(
  globalIgnores(['**/dist/**', '**/node_modules/**', '.capstan/**', '.nx/**', 'coverage/**', 'test/artifacts/**'], 'capstan/ignores'),

  {
    name: 'capstan/typescript',
    files: [...SOURCES, ...TESTS],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: {
        // Each file is checked with the nearest package tsconfig.json. vitest.config.ts is
        // deliberately outside test/tsconfig.json (it is not part of the build); so is the
        // web UI's vite.config.ts (web/tsconfig.json covers only web/src).
        projectService: { allowDefaultProject: ['test/vitest.config.ts', 'test/vitest.record.config.ts', 'services/console/web/vite.config.ts'] },
        tsconfigRootDir: root,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/consistent-type-imports': ['error', { prefer: 'type-imports', fixStyle: 'inline-type-imports' }],
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      'no-restricted-imports': ['error', { patterns: deepImportPatterns }],
      'no-restricted-syntax': ['error', ...namesSyntax],

      // Turned off on purpose (noise for this codebase, not bugs):
      // - Assertions here state intent at boundaries: XState's `types: { input: {} as T }`
      //   idiom (dropping the assertion, as this rule's fix does, silently widens the
      //   machine's input type to `{}`), NATS config enums (`'file' as StreamConfig['storage']`),
      //   `as AnyStateMachine` erasure. Its newer "receiver accepts the original type" check
      //   flags all of them, and it has no option to keep only the plain redundant case.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // `String(x)` on a value narrowed from `unknown` (caught errors, raw CLI flag values)
      // is deliberate; after `x !== undefined` TS types it `{}`, which this rule always
      // flags. Objects in template literals are still caught by restrict-template-expressions.
      '@typescript-eslint/no-base-to-string': 'off',
    },
  },

  {
    name: 'capstan/names-exempt',
    // names.ts is where the names are spelled; tests assert on the literal wire names.
    files: ['schemas/src/names.ts', ...TESTS],
    rules: { 'no-restricted-syntax': 'off' },
  },

  {
    name: 'capstan/tests',
    files: TESTS,
    // Tests poke at `any` on purpose: XState's AnyMachineSnapshot (`snapshot.value`,
    // `context`), asymmetric matchers (`expect.any(Number)`), decoded wire payloads. Typing
    // every probe adds nothing; sources keep the no-unsafe-* rules.
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },

  {
    name: 'capstan/web-hooks',
    // The console's UI: hooks called in a stable order, and effects that name what they read
    // (a stale closure shows an operator yesterday's run).
    files: ['services/console/web/**/*.{ts,tsx}'],
    plugins: { 'react-hooks': reactHooks },
    rules: {
      'react-hooks/rules-of-hooks': 'error',
      'react-hooks/exhaustive-deps': 'error',
    },
  },

  {
    name: 'capstan/no-checkout',
    files: ['services/*/src/**/*.ts'],
    // The CLI is `capstan dev`'s tooling too (its nats-server installer, its dev folder).
    ignores: ['services/cli/src/**'],
    rules: { 'no-restricted-imports': ['error', { patterns: deepImportPatterns, paths: noCheckoutPaths }] },
  },

  {
    name: 'capstan/actors-fence',
    files: ['actors/src/**/*.ts'],
    plugins: { capstan },
    rules: {
      'no-restricted-imports': ['error', { patterns: actorsImportPatterns }],
      'capstan/imports-within': ['error', { dir: 'actors/src', message: IO }],
      // Each clock/random source is reported once: Date.now and Math.random as properties
      // (calls and references alike), performance/crypto/timers as globals.
      'no-restricted-properties': ['error', { object: 'Date', property: 'now', message: TIME }, { object: 'Math', property: 'random', message: RANDOM }],
      'no-restricted-syntax': [
        'error',
        ...namesSyntax,
        { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: `${TIME} (\`new Date()\` reads the clock; \`new Date(event.at)\` is fine.)` },
        { selector: "CallExpression[callee.name='Date']", message: `${TIME} (\`Date()\` returns the current time.)` },
        { selector: 'ImportExpression', message: `${IO} (no dynamic imports)` },
      ],
      'no-restricted-globals': [
        'error',
        { name: 'performance', message: TIME },
        { name: 'crypto', message: RANDOM },
        { name: 'setTimeout', message: TIMERS },
        { name: 'setInterval', message: TIMERS },
        { name: 'setImmediate', message: TIMERS },
        { name: 'process', message: IO },
        { name: 'fetch', message: IO },
        { name: 'require', message: IO },
        { name: 'globalThis', message: `${DETERMINISTIC} Reaching through globalThis would bypass this fence.` },
      ],
    },
  },
);

// Anchor every pattern at the repo root, whatever ESLint's cwd (with --config, ESLint
// otherwise resolves `files`/`ignores` against the cwd, which differs per package).
export default configs.map((c) => ({ basePath: root, ...c }));
