ALTER TABLE "runs" ADD COLUMN "parent_run_id" text;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "parent_step" text;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "continued_from" text;