/**
 * The tenant's policy versions: the list (newest first, without texts) and one version with
 * its text. Read-only, for every role: what the policy says is not itself a secret.
 */
import type { FastifyInstance } from 'fastify';
import { getPolicyVersion, listPolicies, parsePolicyVersion } from '@capstan/kit';
import { apiPaths, type PoliciesResponse, type PolicyVersionResponse } from './api-types.js';
import { notFound, pattern, queryOf, sessionOf } from './http.js';
import type { RouteDeps } from './routes.js';
import { toPolicyVersion, toPolicyVersionSummary } from './views.js';

export function registerPolicyRoutes(app: FastifyInstance, d: RouteDeps): void {
  app.get<{ Params: { tenant: string } }>(pattern(apiPaths.policies(':tenant')), async (req): Promise<PoliciesResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    return { versions: (await listPolicies(d.db, t)).map(toPolicyVersionSummary) };
  });

  app.get<{ Params: { tenant: string; version: string } }>(pattern(apiPaths.policyVersion(':tenant', ':version')), async (req): Promise<PolicyVersionResponse> => {
    const t = d.tenantOf(sessionOf(req), req.params.tenant);
    queryOf(req, []);
    const version = parsePolicyVersion(req.params.version);
    const row = await getPolicyVersion(d.db, t, version);
    if (!row) throw notFound(`tenant ${t} has no policy version ${version}`);
    return toPolicyVersion(row);
  });
}
