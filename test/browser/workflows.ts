/**
 * Workflows for the console's browser tests: the demo workflows (demo.signal waits for an
 * `approve` signal) plus an order that fails when its card is declined, so a failed run with
 * retried attempts and a plain error exists to be found and explained, and a ticker that
 * continues as new (a chain of runs linked both ways).
 */
import { defineWorkflow, demoWorkflows } from '@capstan/actors';
import { demoHandlers, StepError, type Handlers } from '@capstan/worker';

/** quote → charge → receipt; `charge` fails (twice: one retry) when `input.decline` is true. */
export const consoleOrder = defineWorkflow({
  id: 'console.order',
  version: 1,
  searchKeys: ['customer'],
  steps: [
    { name: 'quote', timeoutMs: 10_000 },
    { name: 'charge', timeoutMs: 10_000, retry: { maxAttempts: 2, initialIntervalMs: 100 } },
    { name: 'receipt', timeoutMs: 10_000 },
  ],
});

/** tick, then continue as new until `rounds` rounds have ticked: a chain of runs, each linked to the next. */
export const consoleTicker = defineWorkflow({
  id: 'console.ticker',
  version: 1,
  steps: [
    { name: 'tick', timeoutMs: 10_000 },
    {
      name: 'again',
      when: ({ input }) => Number(input['round'] ?? 1) < Number(input['rounds'] ?? 1),
      continueAsNew: ({ input }) => ({ ...input, round: Number(input['round'] ?? 1) + 1 }),
    },
  ],
});

export const workflows = [...demoWorkflows, consoleOrder, consoleTicker];

export const handlers: Handlers = {
  ...demoHandlers,
  'console.order.quote': ({ input }) => ({ ok: true, cents: Number(input['cents'] ?? 1200) }),
  'console.order.charge': ({ input, attempt }) => {
    if (input['decline'] === true) throw new StepError(`card declined by the issuer (attempt ${attempt})`, { code: 'card_declined' });
    return { ok: true, charged: true };
  },
  'console.order.receipt': () => ({ ok: true, sent: 1 }),
  'console.ticker.tick': ({ input }) => ({ round: Number(input['round'] ?? 1) }),
};
