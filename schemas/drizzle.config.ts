// drizzle-kit: `npx drizzle-kit generate --config schemas/drizzle.config.ts` writes SQL migrations
// for the projection tables (schemas/src/db.ts) into schemas/migrations.
import { defineConfig } from 'drizzle-kit';

export default defineConfig({
  dialect: 'postgresql',
  schema: './schemas/src/db.ts',
  out: './schemas/migrations',
});
