-- The secrets-lease service's role: its own tables (secrets are never deleted, only erased
-- in place, so no DELETE), and the audit log append-only like everyone else. The projector's
-- role has no right on any secrets table (grants are per table), so projections can never
-- read a ciphertext, let alone a data key.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'capstan_secrets') THEN
    CREATE ROLE capstan_secrets NOLOGIN;
  END IF;
END
$$;
--> statement-breakpoint
GRANT SELECT, INSERT, UPDATE ON "secrets", "secret_data_keys", "leases", "lease_revocations" TO capstan_secrets;
--> statement-breakpoint
GRANT SELECT, INSERT ON "audit_log" TO capstan_secrets;
--> statement-breakpoint
GRANT USAGE ON SEQUENCE "audit_log_id_seq" TO capstan_secrets;
