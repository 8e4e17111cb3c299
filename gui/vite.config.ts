/// <reference types="vitest/config" />
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

// The api serves dist/ at `/`, so every asset path is relative to the page.
export default defineConfig({
  base: './',
  plugins: [react()],
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
