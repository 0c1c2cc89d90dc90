#!/usr/bin/env node
// Process boundary of the ingress service.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createIngress } from './app.js';

await runService('ingress', loadConfig, createIngress);
