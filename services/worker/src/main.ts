#!/usr/bin/env node
// Process boundary of a worker.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createWorker } from './app.js';

await runService('worker', loadConfig, createWorker);
