/**
 * Runs in every test worker before its tests: the key store of this run (made by
 * global-setup.ts) becomes `CAPSTAN_AUTH_DIR`, so the fixtures act as the platform admin
 * and the CLI processes tests start find it the way an admin's shell would.
 */
import { inject } from 'vitest';

process.env['CAPSTAN_AUTH_DIR'] = inject('natsAuthDir');
