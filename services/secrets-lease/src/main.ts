#!/usr/bin/env node
// Process boundary of the secrets-lease service.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createSecretsLease } from './app.js';

await runService('secrets-lease', loadConfig, createSecretsLease);
