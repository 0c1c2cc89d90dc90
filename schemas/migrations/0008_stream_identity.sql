ALTER TABLE "checkpoints" ADD COLUMN "stream_created" text;--> statement-breakpoint
ALTER TABLE "checkpoints" ADD COLUMN "stream_first_seq" bigint;--> statement-breakpoint
ALTER TABLE "checkpoints" ADD COLUMN "out_of_sync" text;