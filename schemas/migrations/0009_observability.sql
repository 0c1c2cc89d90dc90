ALTER TABLE "events" ADD COLUMN "step" text;--> statement-breakpoint
ALTER TABLE "events" ADD COLUMN "attempt" integer;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "trace" jsonb;