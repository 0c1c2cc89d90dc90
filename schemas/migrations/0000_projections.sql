CREATE TABLE "approvals" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"step" text NOT NULL,
	"signal" text NOT NULL,
	"status" text NOT NULL,
	"requested_at" timestamp with time zone NOT NULL,
	"decided_at" timestamp with time zone,
	CONSTRAINT "approvals_tenant_run_id_step_pk" PRIMARY KEY("tenant","run_id","step")
);
--> statement-breakpoint
CREATE TABLE "audit_log" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"seq" integer NOT NULL,
	"kind" text NOT NULL,
	"actor" text,
	"detail" jsonb NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"stream_seq" bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "checkpoints" (
	"tenant" text NOT NULL,
	"stream" text NOT NULL,
	"last_stream_seq" bigint NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "checkpoints_tenant_stream_pk" PRIMARY KEY("tenant","stream")
);
--> statement-breakpoint
CREATE TABLE "dead_letters" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"tenant" text NOT NULL,
	"stream" text NOT NULL,
	"stream_seq" bigint NOT NULL,
	"subject" text NOT NULL,
	"code" text NOT NULL,
	"message" text NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "events" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"seq" integer NOT NULL,
	"type" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"stream_seq" bigint NOT NULL,
	"causation_id" text NOT NULL,
	CONSTRAINT "events_tenant_run_id_seq_pk" PRIMARY KEY("tenant","run_id","seq")
);
--> statement-breakpoint
CREATE TABLE "run_search" (
	"tenant" text NOT NULL,
	"key" text NOT NULL,
	"value" text NOT NULL,
	"run_id" text NOT NULL,
	CONSTRAINT "run_search_tenant_key_value_run_id_pk" PRIMARY KEY("tenant","key","value","run_id")
);
--> statement-breakpoint
CREATE TABLE "runs" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"workflow" text NOT NULL,
	"version" integer NOT NULL,
	"status" text NOT NULL,
	"current_step" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"error_code" text,
	"error_message" text,
	"started_at" timestamp with time zone NOT NULL,
	"updated_at" timestamp with time zone NOT NULL,
	"ended_at" timestamp with time zone,
	"last_seq" integer NOT NULL,
	"last_stream_seq" bigint NOT NULL,
	"chain" text NOT NULL,
	CONSTRAINT "runs_tenant_run_id_pk" PRIMARY KEY("tenant","run_id")
);
--> statement-breakpoint
CREATE TABLE "steps" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"step" text NOT NULL,
	"attempt" integer NOT NULL,
	"mode" integer NOT NULL,
	"pool" text NOT NULL,
	"handler" text NOT NULL,
	"worker" text,
	"outcome" text NOT NULL,
	"scheduled_at" timestamp with time zone NOT NULL,
	"started_at" timestamp with time zone,
	"finished_at" timestamp with time zone,
	"duration_ms" integer,
	"result" jsonb,
	"error_code" text,
	"error_message" text,
	CONSTRAINT "steps_tenant_run_id_step_attempt_pk" PRIMARY KEY("tenant","run_id","step","attempt")
);
--> statement-breakpoint
CREATE TABLE "workers" (
	"tenant" text NOT NULL,
	"worker_id" text NOT NULL,
	"pools" jsonb NOT NULL,
	"running" integer NOT NULL,
	"last_seen_at" timestamp with time zone NOT NULL,
	CONSTRAINT "workers_tenant_worker_id_pk" PRIMARY KEY("tenant","worker_id")
);
--> statement-breakpoint
CREATE INDEX "approvals_tenant_status" ON "approvals" USING btree ("tenant","status");--> statement-breakpoint
CREATE UNIQUE INDEX "audit_log_event" ON "audit_log" USING btree ("tenant","run_id","seq");--> statement-breakpoint
CREATE INDEX "audit_log_tenant_at" ON "audit_log" USING btree ("tenant","at");--> statement-breakpoint
CREATE UNIQUE INDEX "dead_letters_position" ON "dead_letters" USING btree ("tenant","stream","stream_seq");--> statement-breakpoint
CREATE UNIQUE INDEX "events_tenant_stream_seq" ON "events" USING btree ("tenant","stream_seq");--> statement-breakpoint
CREATE INDEX "run_search_run" ON "run_search" USING btree ("tenant","run_id");--> statement-breakpoint
CREATE INDEX "runs_tenant_status_started" ON "runs" USING btree ("tenant","status","started_at");--> statement-breakpoint
CREATE INDEX "runs_tenant_workflow_started" ON "runs" USING btree ("tenant","workflow","started_at");--> statement-breakpoint
CREATE INDEX "runs_tenant_started" ON "runs" USING btree ("tenant","started_at");