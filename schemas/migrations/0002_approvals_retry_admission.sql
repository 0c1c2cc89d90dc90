CREATE TABLE "worker_admissions" (
	"tenant" text NOT NULL,
	"worker_id" text NOT NULL,
	"state" text NOT NULL,
	"changed_by" text NOT NULL,
	"changed_at" timestamp with time zone NOT NULL,
	"reason" text,
	"stream_seq" bigint NOT NULL,
	CONSTRAINT "worker_admissions_tenant_worker_id_pk" PRIMARY KEY("tenant","worker_id")
);
--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "decided_by" text;--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "reason" text;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "retries" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "retried_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "runs" ADD COLUMN "retried_by" text;--> statement-breakpoint
ALTER TABLE "steps" ADD COLUMN "sandbox" text;--> statement-breakpoint
-- The projector role (0001) writes worker admissions like the other projection tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON "worker_admissions" TO capstan_projector;
