ALTER TABLE "runs" ADD COLUMN "continued_as" text;--> statement-breakpoint
-- Runs projected before the column: their continuation's row names them (continued_from).
UPDATE "runs" AS r SET "continued_as" = c."run_id" FROM "runs" AS c WHERE c."tenant" = r."tenant" AND c."continued_from" = r."run_id" AND r."continued_as" IS NULL;
