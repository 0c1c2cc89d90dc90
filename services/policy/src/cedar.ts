/**
 * The one import of Cedar (the Node build of `@cedar-policy/cedar-wasm`: the default ESM
 * entry imports a `.wasm` file, which Node cannot).
 *
 * Importing it turns off one V8 optimization for the whole process: inlining JS→Wasm calls
 * into optimized code. With it, Node 20's V8 aborts the process ("Fatal error in , line 0:
 * unreachable code" in `Deoptimizer::DoComputeBuiltinContinuation`) when a function with an
 * inlined call into Cedar is deoptimized lazily, which a policy service under load hit within
 * a minute; without it, the same load ran clean. The cost is a wrapper call per Cedar call.
 */
import { setFlagsFromString } from 'node:v8';

setFlagsFromString('--no-turbo-inline-js-wasm-calls');

export * from '@cedar-policy/cedar-wasm/nodejs';
