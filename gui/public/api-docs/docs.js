// The API reference page: Swagger UI (bundled with the GUI, no CDN) on this server's own document.
// A separate file, not an inline script: the page's Content-Security-Policy allows 'self' scripts only.
window.addEventListener('load', () => {
  window.ui = SwaggerUIBundle({
    url: 'openapi.json',
    dom_id: '#docs',
    deepLinking: true,
    // "Try it out" sends the key typed under "Authorize"; it is kept only for this page's life.
    persistAuthorization: false,
    tryItOutEnabled: false,
    defaultModelsExpandDepth: 0,
    docExpansion: 'list',
    filter: true,
  });
});
