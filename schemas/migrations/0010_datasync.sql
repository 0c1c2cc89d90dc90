CREATE TABLE "datasync_entities" (
	"tenant" text NOT NULL,
	"kind" text NOT NULL,
	"id" text NOT NULL,
	"name" text NOT NULL,
	"version" integer NOT NULL,
	"status" text NOT NULL,
	"fingerprint" text NOT NULL,
	"summary" jsonb NOT NULL,
	"changed_by" text NOT NULL,
	"changed_at" timestamp with time zone NOT NULL,
	"stream_seq" bigint NOT NULL,
	CONSTRAINT "datasync_entities_tenant_kind_id_pk" PRIMARY KEY("tenant","kind","id")
);
--> statement-breakpoint
CREATE TABLE "datasync_pipelines" (
	"tenant" text NOT NULL,
	"pipeline" text NOT NULL,
	"connection" text NOT NULL,
	"model" text NOT NULL,
	"destination" text NOT NULL,
	"cursors" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"spec_fingerprint" text,
	"committed_run" text,
	"committed_at" timestamp with time zone,
	"claimed_by" text,
	"claim_expires_at" timestamp with time zone,
	CONSTRAINT "datasync_pipelines_tenant_pipeline_pk" PRIMARY KEY("tenant","pipeline")
);
--> statement-breakpoint
CREATE TABLE "datasync_run_steps" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"step" text NOT NULL,
	"pipeline" text NOT NULL,
	"state" jsonb NOT NULL,
	"result" jsonb NOT NULL,
	"finished_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "datasync_run_steps_tenant_run_id_step_pk" PRIMARY KEY("tenant","run_id","step")
);
--> statement-breakpoint
CREATE TABLE "datasync_specs" (
	"tenant" text NOT NULL,
	"kind" text NOT NULL,
	"id" text NOT NULL,
	"name" text NOT NULL,
	"version" integer NOT NULL,
	"spec" jsonb NOT NULL,
	"fingerprint" text NOT NULL,
	"updated_by" text NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"deleted_at" timestamp with time zone,
	CONSTRAINT "datasync_specs_tenant_kind_id_pk" PRIMARY KEY("tenant","kind","id")
);
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE, DELETE ON "datasync_entities" TO capstan_projector;
--> statement-breakpoint
-- The datasync service's role: its own tables, its staging and state schema, and the audit
-- log append-only. The projector's role has no right on the specs (hosts, users, tables).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capstan_datasync') THEN
    CREATE ROLE capstan_datasync NOLOGIN;
  END IF;
END
$$;
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE, DELETE ON "datasync_specs", "datasync_pipelines", "datasync_run_steps" TO capstan_datasync;
--> statement-breakpoint
GRANT SELECT, INSERT ON "audit_log" TO capstan_datasync;
--> statement-breakpoint
GRANT USAGE ON SEQUENCE "audit_log_id_seq" TO capstan_datasync;
--> statement-breakpoint
CREATE SCHEMA IF NOT EXISTS capstan_datasync;
--> statement-breakpoint
GRANT USAGE, CREATE ON SCHEMA capstan_datasync TO capstan_datasync;
