ALTER TABLE "runs" ADD COLUMN "engine" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "progress" jsonb;