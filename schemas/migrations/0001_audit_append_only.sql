-- The audit log is append-only at the database level: no UPDATE, no DELETE, no TRUNCATE,
-- whoever asks. (Rebuilding projections never touches it: audit rows are only ever inserted,
-- once per audited event, keyed by tenant, run and seq.)
CREATE OR REPLACE FUNCTION capstan_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
--> statement-breakpoint
CREATE TRIGGER audit_log_no_update_delete
  BEFORE UPDATE OR DELETE ON "audit_log"
  FOR EACH ROW EXECUTE FUNCTION capstan_audit_log_append_only();
--> statement-breakpoint
CREATE TRIGGER audit_log_no_truncate
  BEFORE TRUNCATE ON "audit_log"
  FOR EACH STATEMENT EXECUTE FUNCTION capstan_audit_log_append_only();
--> statement-breakpoint
-- A role for the projector that can insert audit rows but has no right to change them.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capstan_projector') THEN
    CREATE ROLE capstan_projector NOLOGIN;
  END IF;
END
$$;
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE, DELETE ON "runs", "run_search", "steps", "events", "approvals", "workers", "checkpoints", "dead_letters" TO capstan_projector;
--> statement-breakpoint
GRANT SELECT, INSERT ON "audit_log" TO capstan_projector;
--> statement-breakpoint
GRANT USAGE ON SEQUENCE "audit_log_id_seq", "dead_letters_id_seq" TO capstan_projector;
