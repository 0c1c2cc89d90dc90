ALTER TABLE "leases" ADD COLUMN "ttl_ms" integer;--> statement-breakpoint
ALTER TABLE "leases" ADD COLUMN "claimed_at" timestamp with time zone;