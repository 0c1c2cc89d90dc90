/**
 * Capstan's Cedar schema: the principals, actions and resources a tenant's policy speaks of.
 *
 * Every entity's id carries its tenant (`Step::"acme/etl/load"`, `Secret::"acme/DB_PASSWORD"`,
 * `Host::"acme/api.github.com:443"`, `Mode::"acme/2"`), every entity is `in` its tenant, and
 * has a `tenant` attribute. The service only ever builds requests whose principal and resource
 * belong to the asking tenant (taken from the subject), and every policy set carries a fence
 * that forbids any request where they do not: a policy naming another tenant's entities
 * matches nothing of this tenant's, and cannot grant anything across tenants.
 *
 * | entity     | id                          | in         | attributes                          |
 * |------------|-----------------------------|------------|-------------------------------------|
 * | Tenant     | `<t>`                       |            |                                     |
 * | Workflow   | `<t>/<workflow>`            | Tenant     | tenant, name                        |
 * | Step       | `<t>/<workflow>/<step>`     | Workflow   | tenant, workflow, name              |
 * | Worker     | `<t>/<worker>`              | Tenant     | tenant, name                        |
 * | Agent      | `<t>/<agent>`               | Tenant     | tenant, name                        |
 * | Mode       | `<t>/<0-3>`                 | Tenant     | tenant, level                       |
 * | Secret     | `<t>/<KEY>`                 | Tenant     | tenant, key                         |
 * | Host       | `<t>/<host>:<port>`         | Tenant     | tenant, hostname, port              |
 * | Target     | `<t>/<name>`                | Tenant     | tenant, name                        |
 * | Credential | `<t>/<KEY>`                 | Tenant     | tenant, key                         |
 *
 * | action               | principal | resource   | context                            |
 * |----------------------|-----------|------------|------------------------------------|
 * | `run-step`           | Step      | Mode       | `worker?: Worker`                  |
 * | `lease-secret`       | Step      | Secret     | `worker?: Worker`                  |
 * | `egress`             | Step      | Host       | `worker?: Worker`                  |
 * | `external-write`     | Step      | Target     | `worker?: Worker`                  |
 * | `request-credential` | Step      | Credential | `worker?: Worker`, `agent?: Agent` |
 *
 * `Agent` is declared for mode-3 credential requests; today's queries name no agent, so
 * `context has agent` is false.
 */
import { PolicyAction } from '@capstan/schemas';

export const EntityType = {
  Tenant: 'Tenant',
  Workflow: 'Workflow',
  Step: 'Step',
  Worker: 'Worker',
  Agent: 'Agent',
  Mode: 'Mode',
  Secret: 'Secret',
  Host: 'Host',
  Target: 'Target',
  Credential: 'Credential',
} as const;
export type EntityType = (typeof EntityType)[keyof typeof EntityType];

/** The resource type each action is about. */
export const RESOURCE_OF: Readonly<Record<PolicyAction, EntityType>> = {
  [PolicyAction.RunStep]: EntityType.Mode,
  [PolicyAction.LeaseSecret]: EntityType.Secret,
  [PolicyAction.Egress]: EntityType.Host,
  [PolicyAction.ExternalWrite]: EntityType.Target,
  [PolicyAction.RequestCredential]: EntityType.Credential,
};

/** The schema in Cedar's own syntax (no namespace: policies write `Step::"…"`, `Action::"egress"`). */
export const CEDAR_SCHEMA = `
entity Tenant;
entity Workflow in [Tenant] { tenant: Tenant, name: String };
entity Step in [Workflow] { tenant: Tenant, workflow: Workflow, name: String };
entity Worker in [Tenant] { tenant: Tenant, name: String };
entity Agent in [Tenant] { tenant: Tenant, name: String };
entity Mode in [Tenant] { tenant: Tenant, level: Long };
entity Secret in [Tenant] { tenant: Tenant, key: String };
entity Host in [Tenant] { tenant: Tenant, hostname: String, port: Long };
entity Target in [Tenant] { tenant: Tenant, name: String };
entity Credential in [Tenant] { tenant: Tenant, key: String };

type Asker = { worker?: Worker };

action "run-step" appliesTo { principal: [Step], resource: [Mode], context: Asker };
action "lease-secret" appliesTo { principal: [Step], resource: [Secret], context: Asker };
action "egress" appliesTo { principal: [Step], resource: [Host], context: Asker };
action "external-write" appliesTo { principal: [Step], resource: [Target], context: Asker };
action "request-credential" appliesTo { principal: [Step], resource: [Credential], context: { worker?: Worker, agent?: Agent } };
`;

/** Policy ids starting with this are the platform's own; no tenant policy may use one. */
export const RESERVED_ID_PREFIX = 'capstan';

/**
 * The fence every compiled set carries. The service never builds a request whose principal,
 * resource or asking worker belong to different tenants; the fence makes Cedar itself refuse
 * one, whatever the tenant wrote (forbid wins over any permit).
 */
export const FENCE_POLICIES: Readonly<Record<string, string>> = {
  'capstan.tenant-fence': 'forbid(principal, action, resource) unless { principal.tenant == resource.tenant && principal in resource.tenant && resource in principal.tenant };',
  'capstan.worker-fence': 'forbid(principal, action, resource) when { context has worker && context.worker.tenant != principal.tenant };',
};
