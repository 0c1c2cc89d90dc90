CREATE TABLE "lease_revocations" (
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"revoked" boolean NOT NULL,
	"reason" text NOT NULL,
	"stream_seq" bigint,
	"changed_at" timestamp with time zone NOT NULL,
	CONSTRAINT "lease_revocations_tenant_run_id_pk" PRIMARY KEY("tenant","run_id")
);
--> statement-breakpoint
CREATE TABLE "leases" (
	"id" text PRIMARY KEY NOT NULL,
	"tenant" text NOT NULL,
	"run_id" text NOT NULL,
	"step" text NOT NULL,
	"attempt" integer NOT NULL,
	"keys" text[] NOT NULL,
	"issued_at" timestamp with time zone NOT NULL,
	"expires_at" timestamp with time zone NOT NULL,
	"redeemed_at" timestamp with time zone,
	"revoked_at" timestamp with time zone
);
--> statement-breakpoint
CREATE TABLE "policies" (
	"tenant" text NOT NULL,
	"version" integer NOT NULL,
	"sha256" text NOT NULL,
	"by" text NOT NULL,
	"reason" text,
	"at" timestamp with time zone NOT NULL,
	"text" text NOT NULL,
	"stream_seq" bigint NOT NULL,
	CONSTRAINT "policies_tenant_version_pk" PRIMARY KEY("tenant","version")
);
--> statement-breakpoint
CREATE TABLE "secret_data_keys" (
	"tenant" text NOT NULL,
	"version" integer NOT NULL,
	"wrapped" "bytea" NOT NULL,
	"master_key_id" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "secret_data_keys_tenant_version_pk" PRIMARY KEY("tenant","version")
);
--> statement-breakpoint
CREATE TABLE "secrets" (
	"tenant" text NOT NULL,
	"name" text NOT NULL,
	"version" integer NOT NULL,
	"key_version" integer NOT NULL,
	"nonce" "bytea",
	"ciphertext" "bytea",
	"lifecycle" text NOT NULL,
	"connector" jsonb,
	"refresh_window_ms" integer,
	"expires_at" timestamp with time zone,
	"refreshed_at" timestamp with time zone,
	"created_at" timestamp with time zone NOT NULL,
	"rotated_at" timestamp with time zone,
	"deleted_at" timestamp with time zone,
	"updated_by" text NOT NULL,
	CONSTRAINT "secrets_tenant_name_pk" PRIMARY KEY("tenant","name")
);
--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "approvers" text;--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "policy_version" integer;--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "policies" text;--> statement-breakpoint
ALTER TABLE "approvals" ADD COLUMN "expires_at" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "leases_tenant_run" ON "leases" USING btree ("tenant","run_id");--> statement-breakpoint
-- Policy versions are immutable, like the stream they are read from: rows are only ever
-- added (a re-applied version finds its row by its key), never changed or removed.
CREATE OR REPLACE FUNCTION capstan_policies_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'policies are immutable: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
--> statement-breakpoint
CREATE TRIGGER policies_no_update_delete
  BEFORE UPDATE OR DELETE ON "policies"
  FOR EACH ROW EXECUTE FUNCTION capstan_policies_immutable();
--> statement-breakpoint
CREATE TRIGGER policies_no_truncate
  BEFORE TRUNCATE ON "policies"
  FOR EACH STATEMENT EXECUTE FUNCTION capstan_policies_immutable();
--> statement-breakpoint
GRANT SELECT, INSERT ON "policies" TO capstan_projector;
