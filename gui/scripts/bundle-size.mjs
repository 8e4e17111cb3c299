#!/usr/bin/env node
/**
 * Print the gzipped size of everything in dist/ that the GUI loads, and fail over the budget.
 * dist/api-docs/ (the API reference viewer, loaded only by /api/docs) is reported apart.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

/** The limit: the whole bundle under 1 MB gzipped. */
const BUDGET_BYTES = 1024 * 1024;
const dist = fileURLToPath(new URL('../dist/', import.meta.url));

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

const DOCS = 'api-docs';
let raw = 0;
let gzipped = 0;
let docs = 0;
for (const path of files(dist).sort()) {
  const bytes = readFileSync(path);
  const gz = gzipSync(bytes, { level: 9 }).length;
  if (relative(dist, path).startsWith(`${DOCS}/`)) {
    docs += gz;
    continue;
  }
  raw += bytes.length;
  gzipped += gz;
  console.log(`${relative(dist, path).padEnd(40)} ${(bytes.length / 1024).toFixed(1).padStart(8)} kB  ${(gz / 1024).toFixed(1).padStart(7)} kB gzip`);
}
console.log(`${'total'.padEnd(40)} ${(raw / 1024).toFixed(1).padStart(8)} kB  ${(gzipped / 1024).toFixed(1).padStart(7)} kB gzip (budget ${BUDGET_BYTES / 1024} kB)`);
console.log(`${(DOCS + '/ (API reference, /api/docs only)').padEnd(40)} ${''.padStart(11)}  ${(docs / 1024).toFixed(1).padStart(7)} kB gzip`);
if (gzipped > BUDGET_BYTES) {
  console.error(`bundle is ${gzipped} bytes gzipped, over the ${BUDGET_BYTES} byte budget`);
  process.exit(1);
}
