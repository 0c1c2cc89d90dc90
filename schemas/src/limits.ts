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
} as const;
