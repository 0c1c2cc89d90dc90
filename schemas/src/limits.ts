/** Version of the run event envelope. Bump only with a decoder that still reads older ones. */
export const EVENT_ENVELOPE_VERSION = 1 as const;

/** Size limits at the boundaries, in bytes of the encoded value. */
export const LIMITS = {
  /** A submitted run's input. */
  inputBytes: 64 * 1024,
  /** A step's result: metadata only (counts, sizes, fingerprints, references). */
  resultBytes: 4 * 1024,
  /** A signal's payload. */
  signalBytes: 16 * 1024,
  /** Any message Capstan stores (below the server's 1 MiB max_payload). */
  messageBytes: 256 * 1024,
  /**
   * Earlier steps' results handed to a step in its work item, in all (engine 2). Past it the
   * oldest are left out and named in the item's `omitted`.
   */
  resultsInWorkBytes: 128 * 1024,
} as const;

/**
 * Events one run may record: the run stream keeps at most this many per run subject and
 * refuses more (\`discard: new\`), so the run core ends a run before it gets there.
 */
export const MAX_RUN_EVENTS = 10_000;
