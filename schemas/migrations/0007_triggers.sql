CREATE TABLE "schedules" (
	"tenant" text NOT NULL,
	"schedule_id" text NOT NULL,
	"generation" bigint NOT NULL,
	"status" text NOT NULL,
	"workflow" text NOT NULL,
	"spec" jsonb NOT NULL,
	"anchor_at" timestamp with time zone NOT NULL,
	"changed_by" text NOT NULL,
	"changed_at" timestamp with time zone NOT NULL,
	"last_op" text NOT NULL,
	"reason" text,
	"stream_seq" bigint NOT NULL,
	CONSTRAINT "schedules_tenant_schedule_id_pk" PRIMARY KEY("tenant","schedule_id")
);
--> statement-breakpoint
CREATE TABLE "webhook_routes" (
	"tenant" text NOT NULL,
	"route_id" text NOT NULL,
	"workflow" text NOT NULL,
	"secrets" jsonb NOT NULL,
	"fields" jsonb,
	"status" text NOT NULL,
	"changed_by" text NOT NULL,
	"changed_at" timestamp with time zone NOT NULL,
	"reason" text,
	"stream_seq" bigint NOT NULL,
	CONSTRAINT "webhook_routes_tenant_route_id_pk" PRIMARY KEY("tenant","route_id")
);
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE, DELETE ON "schedules", "webhook_routes" TO capstan_projector;
