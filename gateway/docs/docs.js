// The gateway's API page: Swagger UI (swagger-ui-dist from npm, served by the gateway
// itself) over the merged document of the three APIs. Requests made with "Try it out" go
// to this same gateway; the API key given under "Authorize" stays in this page's memory
// (never in a URL, a cookie or local storage).
"use strict";

window.addEventListener("load", function () {
  var root = document.getElementById("docs");
  if (typeof window.SwaggerUIBundle !== "function") {
    root.textContent = "The API page could not load its script; the document is at /openapi.json.";
    return;
  }
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    domNode: root,
    deepLinking: true,
    persistAuthorization: false,
    displayRequestDuration: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    // No badge fetched from swagger.io: nothing on this page leaves the gateway.
    validatorUrl: null,
    layout: "BaseLayout",
    presets: [window.SwaggerUIBundle.presets.apis],
  });
});
