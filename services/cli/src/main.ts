#!/usr/bin/env node
/** `capstan`: the command line for Capstan. Exit codes: 0 ok, 1 failed, 2 bad usage, 3 not found. */
import { CapstanError, ErrorCode } from '@capstan/schemas';
import { HelpRequested } from './args.js';
import { cancelCmd, dlqCmd, eventsCmd, replayCmd, signalCmd, statusCmd, submitCmd } from './runs.js';
import { authCmd, credsCmd, leafCmd, tenantCmd } from './admin.js';
import { auditCmd, runCmd, runsCmd, systemStatusCmd } from './read.js';
import { migrateCmd, projectionsCmd } from './projections.js';
import { approvalsCmd, approveCmd, denyCmd, retryCmd, workersCmd } from './operate.js';
import { policyCmd } from './policy.js';
import { exportCmd } from './review.js';
import { secretsCmd } from './secrets.js';
import { routesCmd, schedulesCmd } from './triggers.js';
import { datasyncCmd } from './datasync.js';

const USAGE = `capstan — durable workflows on NATS JetStream

usage:
  capstan dev [--demo] [--exit] [--tenant demo] [--port N] [--fresh] [--nats <url>] [--cluster]
                                       run the platform locally (nats-server, orchestrator, worker)
  capstan submit <workflow> --tenant <t> [--input <json>] [--run-id <ulid>]
                 [--idempotency-key <k>] [--wait] [--timeout <s>] [--json]
  capstan status <runId> --tenant <t> [--json]
  capstan events <runId> --tenant <t> [--json]
  capstan replay <runId> --tenant <t> [--recheck-policy] [--json]
                                       refold the run through its recorded workflow version
  capstan export --tenant <t> (--run <id> … | --since <time> [--until <time>]) --out <file> [--gzip] [--json]
                                       a run, or every run started in a window, with the workflow
                                       fingerprints and policy versions they used, to one checksummed file
  capstan replay --from <file> [--recheck-policy] [--json]
                                       refold an export's runs with no server (CAPSTAN_WORKFLOWS: the
                                       workflows); --recheck-policy decides again under the exported policies
  capstan signal <runId> <name> --tenant <t> [--payload <json>]
  capstan cancel <runId> --tenant <t> [--reason <text>]
  capstan approve <runId> <step> --tenant <t> [--as <user>] [--reason <text>] [--json]
  capstan deny <runId> <step> --tenant <t> [--as <user>] [--reason <text>] [--json]
                                       decide a step waiting for approval (deny fails the run)
  capstan retry <runId> --tenant <t> [--as <user>] [--reason <text>] [--json]
                                       reopen a failed run at the step that failed
  capstan workers approve|revoke <workerId> --tenant <t> [--as <user>] [--reason <text>]
                                       admit a worker to pull the tenant's work, or stop it
  capstan dlq --tenant <t> [--limit N] [--json]   dead letters: commands Capstan refused, and why
  capstan secrets put <NAME> --tenant <t> (--value-file <f> | --from-env <VAR> | < stdin)
                  [--lifecycle static|refreshable|exchangeable|ambient] [--connector <json>]
                  [--refresh-window <s>] [--expires-at <iso>] [--as <user>]
  capstan secrets rotate <NAME> --tenant <t> (--value-file <f> | --from-env <VAR> | < stdin | --refresh)
  capstan secrets delete <NAME> --tenant <t> [--as <user>]
  capstan secrets list --tenant <t> [--all] [--json]
                                       a tenant's secrets (through the secrets-lease service): never a value
                                       on the command line; list shows names, versions, lifecycles, dates
  capstan policy set --tenant <t> --file <p.cedar> [--as <user>] [--reason <text>]
                                       store a new version of the tenant's Cedar policy (in force at once);
                                       an invalid policy prints Cedar's diagnostics and stores nothing (exit 1)
  capstan policy get --tenant <t> [--version N]   the policy text in force (or version N)
  capstan policy history --tenant <t> [--limit N] every version: who, when, why, digest
  capstan policy test --tenant <t> (--file <queries.json> | --action <a> --workflow <w> --step <s>
                      [--mode N] [--secret K] [--host h:p] [--target x] [--worker w])
                      [--policy <p.cedar> | --version N]
                                       each query's decision (allow, deny, needs-approval), recording nothing
  capstan datasync put connection|model|destination <id> --tenant <t> (--file <spec.json> | --spec <json>)
                  [--name <text>] [--as <user>]     define a connection, model or destination (its spec stays
                                       in the data plane; secrets are named, never given)
  capstan datasync delete <kind> <id> --tenant <t> | capstan datasync list [kind] --tenant <t> [--all] [--json]
  capstan datasync run --tenant <t> --connection <id> --model <id> --destination <id> [--wait] [--json]
                                       start a pipeline run (Retrieve → Refresh → Build model → Resolve → Load)
  capstan datasync preview --tenant <t> --connection <id> (--sql <q> | --sql-file <f>) [--timeout-ms N]
                                       one read-only SELECT/WITH: at most 100 rows, cells cut

tenancy (the platform admin, with the operator's key store: --auth-dir <dir>, $CAPSTAN_AUTH_DIR, or \`capstan dev\`'s):
  capstan auth init                               make a key store: operator, system and platform accounts, service identities
  capstan auth serve                              enforce fleet decisions on worker credentials (capstan dev runs it)
  capstan tenant add <t> [--max-storage 4GiB] [--max-streams N] [--max-consumers N] [--max-connections N] [--pool p]… [--replicas 1|3|5] [--placement tag,…]
                                                  the tenant's NATS account, quota, streams, consumers and registry record
  capstan tenant quota <t> [same flags]           show or change a tenant's quota (in force at once)
  capstan tenant list [--json]
  capstan creds issue --tenant <t> --role client|worker|operator --name <n> [--pool p]… [--group g]… [--out <file>] [--expires 30d]
                                                  write a .creds file (owner-only); a worker's names its pools
  capstan creds revoke|restore --tenant <t> --name <n>
                                                  cut a credential off at the server (its connections close at once), or lift that
  capstan creds list --tenant <t> [--json]
  capstan leaf config --tenant <t> --platform <nats-leaf://host:7422> --user <worker.creds> [--pool p]… [--out <dir>]
                                                  a leaf credential and the nats-server configuration for the tenant's own
                                                  server: its workers reach the platform through it, outbound only
  capstan schedules create <id> --tenant <t> --workflow <w> (--cron <expr> [--timezone <IANA>] | --every <5m>)
                   [--input <json>] [--start <iso>] [--end <iso>] [--overlap skip|buffer-one|allow-all]
                   [--catchup skip|last|all] [--catchup-window <1h>] [--as <user>] [--reason <text>]
  capstan schedules list --tenant <t> [--all] [--next N] [--json]
                                       schedules with their next firing times and last run
  capstan schedules pause|resume|trigger|delete <id> --tenant <t> [--as <user>] [--reason <text>]
                                       trigger: start a run now, outside the schedule's slots
  capstan routes create <id> --tenant <t> --workflow <w> --secret <NAME> [--secret <NAME>]
                 [--field key=/json/pointer …] [--as <user>]
                                       a webhook route: POST /hooks/<t>/<id> on ingress starts <w>
  capstan routes list --tenant <t> [--all] [--json] | capstan routes enable|disable|delete <id> --tenant <t>

queries over the projections (through the console's API: --api <url>, $CAPSTAN_API_URL, or \`capstan dev\`'s console;
with an API token: --token <t>, $CAPSTAN_TOKEN, $CAPSTAN_TOKEN_FILE, or \`capstan dev\`'s; a token only reads):
  capstan runs --tenant <t> [--status s] [--workflow w] [--since 1h] [--until …] [--where key=value …]
               [--limit N] [--cursor c] [--json]
  capstan run <runId> --tenant <t> [--json]       a run, its steps and its timeline
  capstan audit --tenant <t> [--run id] [--since 1h] [--limit N] [--cursor c] [--json]
  capstan approvals --tenant <t> [--status waiting|approved|denied|all] [--limit N] [--json]
                                                  steps waiting for a person (default: waiting)
  capstan workers --tenant <t> [--json]           the fleet: admission, pools, load, last seen
  capstan status --system [--json]                the NATS server and projection lag per tenant

projections (Postgres: --db <url> or $DATABASE_URL):
  capstan migrate                                 apply the projection schema's migrations
  capstan projections rebuild [--tenant t] [--json]
                                                  drop a tenant's rows and rebuild them from its stream
  capstan projections verify [--tenant t] [--json]
                                                  compare rows with a fold of the streams; exit 1: rows differ,
                                                  4: a run's event chain is broken, 5: both

<command> --help lists a command's flags.
--as defaults to $CAPSTAN_USER, else the login name: actions are recorded with their author.
every command that talks to NATS takes --nats <url> (default: $NATS_URL, else the server of a running \`capstan dev\`)
and acts with --creds <file> (default: $NATS_CREDS), else with the key store as a short-lived user of the
command's role (client for runs, operator for decisions, policy and secrets); \`dev\` given a server starts no
nats-server of its own
`;

const commands: Record<string, (argv: string[]) => Promise<number>> = {
  // Loaded only when asked for: it brings in every service, which no other command needs.
  dev: async (argv) => (await import('./dev.js')).devCmd(argv),
  submit: submitCmd,
  status: (argv) => (argv.includes('--system') ? systemStatusCmd(argv) : statusCmd(argv)),
  runs: (argv) => runsCmd(argv),
  run: (argv) => runCmd(argv),
  audit: (argv) => auditCmd(argv),
  migrate: migrateCmd,
  projections: projectionsCmd,
  events: eventsCmd,
  replay: (argv) => replayCmd(argv),
  export: (argv) => exportCmd(argv),
  signal: signalCmd,
  cancel: cancelCmd,
  approvals: (argv) => approvalsCmd(argv),
  approve: (argv) => approveCmd(argv),
  deny: (argv) => denyCmd(argv),
  retry: (argv) => retryCmd(argv),
  workers: (argv) => workersCmd(argv),
  dlq: dlqCmd,
  secrets: (argv) => secretsCmd(argv),
  policy: (argv) => policyCmd(argv),
  tenant: tenantCmd,
  creds: credsCmd,
  leaf: leafCmd,
  auth: authCmd,
  schedules: (argv) => schedulesCmd(argv),
  routes: (argv) => routesCmd(argv),
  datasync: (argv) => datasyncCmd(argv),
};

const [name, ...rest] = process.argv.slice(2);
if (!name || name === '--help' || name === '-h' || name === 'help') {
  process.stdout.write(USAGE);
  process.exit(name ? 0 : 2);
}
const cmd = commands[name];
if (!cmd) {
  process.stderr.write(`capstan: unknown command ${JSON.stringify(name)}\n\n${USAGE}`);
  process.exit(2);
}
try {
  process.exitCode = await cmd(rest);
} catch (e) {
  if (e instanceof HelpRequested) {
    // The words before the command's own arguments: its name, and a subcommand if any.
    process.stdout.write(e.render([name, ...rest.slice(0, rest.length - e.argv.length)]));
    process.exitCode = 0;
  } else if ((rest[0] === '--help' || rest[0] === '-h') && CapstanError.is(e)) {
    // A command with subcommands, asked for help before choosing one: its part of the usage.
    process.stdout.write(`${usageOf(name)}\n`);
    process.exitCode = 0;
  } else if (CapstanError.is(e)) {
    process.stderr.write(`capstan: ${e.code}: ${e.message}\n`);
    process.exitCode =
      e.code === ErrorCode.InvalidArgument || e.code === ErrorCode.InvalidTenantId || e.code === ErrorCode.InvalidRunId ? 2 : e.code === ErrorCode.RunNotFound ? 3 : 1;
  } else {
    process.stderr.write(`capstan: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  }
}
/** The lines of USAGE about one command (and the lines that continue them). */
function usageOf(command: string): string {
  const out: string[] = [];
  let taking = false;
  for (const line of USAGE.split('\n')) {
    if (/^ {2}capstan /.test(line)) taking = line.startsWith(`  capstan ${command} `) || line === `  capstan ${command}`;
    else if (!/^ {3,}\S/.test(line)) taking = false;
    if (taking) out.push(line);
  }
  return out.join('\n');
}

// Open handles (a consumer mid-close) must not keep a finished command alive.
setTimeout(() => process.exit(), 100).unref();
