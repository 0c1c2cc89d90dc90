/** @capstan/cli — the `capstan` command. Its reusable pieces for tests and tools: */
export { summarize, readDeadLetters, replayCmd } from './runs.js';
export type { RunSummary, DeadLetterView } from './runs.js';
