#!/usr/bin/env node
// Process boundary of the sandbox service.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createSandboxService } from './app.js';

await runService('sandbox', loadConfig, createSandboxService);
