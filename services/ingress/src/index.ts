/**
 * @capstan/ingress — signed webhook deliveries (Standard Webhooks) in, submits out. It never
 * holds a signing secret: the secrets-lease service checks each signature.
 */
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { createIngress } from './app.js';
export type { Ingress, IngressStats } from './app.js';
export { selectInput, createRateLimiter } from './deliveries.js';
export type { RateLimiter } from './deliveries.js';
