#!/usr/bin/env node
// Process boundary of the datasync service.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createDatasync } from './app.js';

await runService('datasync', loadConfig, createDatasync);
