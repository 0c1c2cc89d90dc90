/**
 * Where this package's migrations are (drizzle-kit writes them beside `src/` and `dist/`):
 * the package owns its schema and its migrations, so a service that installs
 * `@capstan/schemas` migrates without a repository checkout.
 */
export const MIGRATIONS_URL: URL = new URL('../migrations/', import.meta.url);
