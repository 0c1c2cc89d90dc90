/**
 * @capstan/datasync — the data plane's connector runtime for data-sync pipelines: the
 * catalog's specs (connections, models, destinations) kept where the data lives, the five
 * pipeline steps (Retrieve, Refresh, Build model, Resolve associations, Load) run against
 * the tenant's Postgres with leased credentials, destinations (a Postgres schema, a folder
 * of JSONL or Parquet files) written so a retried load writes nothing twice, and the
 * bounded preview checked by PostgreSQL's own parser.
 */
export { createDatasync } from './app.js';
export type { DatasyncService, DatasyncStats } from './app.js';
export { loadConfig } from './config.js';
export type { Config } from './config.js';
export { canonicalJson, checkModel, summaryOf } from './catalog.js';
export { checkPreviewQuery, sanitizeCell, loadParser } from './preview.js';
export { buildPlan, pipelineId } from './plan.js';
export { destinationFolder, parquetType } from './destinations.js';
export { copyValue, portableType } from './sql.js';
