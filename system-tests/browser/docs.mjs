// Drives Debian's chromium (through playwright-core) over the gateway's /docs page and
// prints what it saw as one JSON object; system-tests/tests/api_docs_page.rs judges it.
//
//   node docs.mjs GATEWAY_URL API_KEY ORDER_ID
//
// It opens /docs, lists the operations the page shows, authorizes with the key, tries
// GET /v1/orders/{id} for ORDER_ID from the page and reads the answer the page shows. On
// the way it records every request the page made, every Content-Security-Policy
// violation and every script error.
import { chromium } from "playwright-core";

const [gateway, key, orderId] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.SHOP_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const seen = { requests: [], violations: [], errors: [], failedFiles: [] };
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  page.on("request", (request) => {
    seen.requests.push(request.url());
    if (new URL(request.url()).pathname.startsWith("/v1/")) {
      seen.triedWithKey = request.headers()["authorization"] === `Bearer ${key}`;
    }
  });
  // The API's own error answers (the 404 tried below) are not the page's failures; a file
  // of the page that fails to load is.
  page.on("response", (response) => {
    if (response.status() >= 400 && !new URL(response.url()).pathname.startsWith("/v1/")) {
      seen.failedFiles.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on("pageerror", (error) => seen.errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      seen.errors.push(message.text());
    }
  });
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (event) =>
      window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`),
    );
  });

  const response = await page.goto(`${gateway}/docs`);
  seen.status = response.status();
  seen.url = page.url();
  seen.csp = response.headers()["content-security-policy"] || null;
  await page.waitForSelector(".opblock");
  seen.title = (await page.locator(".info .title").first().innerText()).trim();
  seen.operations = await page.$$eval(".opblock", (blocks) =>
    blocks.map((block) => {
      const method = block.querySelector(".opblock-summary-method").textContent.trim();
      const path = block.querySelector(".opblock-summary-path").getAttribute("data-path");
      return `${method} ${path}`;
    }),
  );
  seen.tags = await page.$$eval(".opblock-tag", (tags) =>
    tags.map((tag) => tag.getAttribute("data-tag")),
  );

  // Authorize: the key goes into the page's memory only.
  await page.click(".auth-wrapper .authorize");
  await page.fill(".auth-container input[type=text], .auth-container input[type=password]", key);
  await page.click(".auth-btn-wrapper .authorize");
  await page.click(".auth-btn-wrapper .btn-done");

  // Try GET /v1/orders/{id} from the page.
  const operation = page.locator("#operations-orders-order");
  await operation.locator(".opblock-summary").click();
  await operation.locator(".try-out__btn").click();
  await operation.locator("tr[data-param-name=id] input").fill(orderId);
  await operation.locator(".execute").click();
  const live = operation.locator(".live-responses-table .response .response-col_status");
  await live.waitFor();
  seen.tried = {
    status: Number((await live.innerText()).trim()),
    body: await operation.locator(".live-responses-table .response-col_description pre").first().innerText(),
  };

  seen.violations = await page.evaluate(() => window.__violations);
  seen.storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }));
  seen.cookies = await page.context().cookies();
  seen.finalUrl = page.url();
} catch (error) {
  seen.failure = String(error);
  if (process.env.SHOP_TEST_SCREENSHOT) {
    const [page] = browser.contexts().flatMap((context) => context.pages());
    await page?.screenshot({ path: process.env.SHOP_TEST_SCREENSHOT, fullPage: true });
  }
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen) + "\n");
