/// <reference types="vitest/config" />
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import react from '@vitejs/plugin-react';
import { defineConfig, type Plugin } from 'vite';

/**
 * The API reference viewer (Swagger UI) beside the GUI: its prebuilt bundle and styles are copied
 * from the pinned npm package into dist/api-docs/, where public/api-docs/ holds the page that the
 * api serves at /api/docs. Nothing is fetched from a CDN at run time.
 */
function apiDocsViewer(): Plugin {
  const root = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'));
  const files = ['swagger-ui-bundle.js', 'swagger-ui.css', 'LICENSE', 'NOTICE'];
  return {
    name: 'api-docs-viewer',
    apply: 'build',
    generateBundle() {
      for (const file of files) {
        this.emitFile({ type: 'asset', fileName: `api-docs/${file}`, source: readFileSync(join(root, file)) });
      }
    },
  };
}

// The api serves dist/ at `/`, so every asset path is relative to the page.
export default defineConfig({
  base: './',
  plugins: [react(), apiDocsViewer()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 600,
  },
  server: {
    // `npm run dev` against a local stack: `ONNX_WEB_API=http://127.0.0.1:5000 npm run dev`
    proxy: process.env.ONNX_WEB_API
      ? {
          '/api': process.env.ONNX_WEB_API,
          '/output': process.env.ONNX_WEB_API,
        }
      : undefined,
  },
  test: {
    include: ['src/**/*.test.ts', 'src/**/*.test.tsx'],
    environment: 'happy-dom',
  },
});
