#!/usr/bin/env node
// Process boundary of the projector.
import { runService } from '@capstan/kit';
import { loadConfig } from './config.js';
import { createProjector } from './app.js';

await runService('projector', loadConfig, createProjector);
