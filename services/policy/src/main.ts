#!/usr/bin/env node
// Process boundary of the policy service.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createPolicyService } from './app.js';

await runService('policy', loadConfig, createPolicyService);
