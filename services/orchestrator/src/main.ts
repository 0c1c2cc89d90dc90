#!/usr/bin/env node
// Process boundary of the orchestrator.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createOrchestrator } from './app.js';

await runService('orchestrator', loadConfig, createOrchestrator);
