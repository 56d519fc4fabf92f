// Drives Debian's chromium (through playwright-core) over the gateway's /console/ page and
// prints what it saw as one JSON object; system-tests/tests/web_console.rs judges it.
//
//   node console.mjs GATEWAY_URL CLIENT_KEY OPERATOR_KEY FIXTURES_JSON
//
// FIXTURES_JSON names what the test prepared: {"user": <id>, "failed": <order whose saga
// failed>, "poisoned": <aggregate parked in the orders read model>, "ordersTopic": <name>}.
// The script places orders through the API itself while the console is open, so that the
// page has to update by itself. When it has done everything else it prints "dead?" on
// stderr, waits for a line on stdin (the test stops the console's API then) and looks at
// the page once more. With SHOP_CONSOLE_SCREENSHOTS set, it saves the main views there.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [gateway, clientKey, operatorKey, fixturesJson] = process.argv.slice(2);
const fixtures = JSON.parse(fixturesJson);
const shots = process.env.SHOP_CONSOLE_SCREENSHOTS || "";
const seen = {
  requests: [],
  violations: [],
  errors: [],
  failedFiles: [],
  posts: { client: [], operator: [] },
  deadLetterCalls: { client: 0, operator: 0 },
};

async function api(method, path, body, key = clientKey) {
  const response = await fetch(`${gateway}${path}`, {
    method,
    headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

function placeOrder(cents = 1250) {
  return api("POST", "/v1/orders", {
    user_id: fixtures.user,
    currency: "EUR",
    lines: [{ sku: "SKU-1", quantity: 1, unit_price_cents: cents }],
  });
}

async function open(browser, key, role) {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("request", (request) => {
    seen.requests.push(request.url());
    const path = new URL(request.url()).pathname;
    if (request.method() === "POST") seen.posts[role].push(path);
    if (path.startsWith("/v1/dead-letters")) seen.deadLetterCalls[role] += 1;
  });
  page.on("response", (response) => {
    const path = new URL(response.url()).pathname;
    if (response.status() >= 400 && !path.startsWith("/v1/") && !path.startsWith("/console/api/")) {
      seen.failedFiles.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on("pageerror", (error) => seen.errors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) {
      seen.errors.push(message.text());
    }
  });
  page.on("dialog", (dialog) => dialog.accept());
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (event) =>
      window.__violations.push(`${event.violatedDirective} ${event.blockedURI}`),
    );
  });
  const response = await page.goto(`${gateway}/console/`);
  seen.status = response.status();
  seen.csp = response.headers()["content-security-policy"] || null;
  await page.fill("input[name=api-key]", key);
  await page.click("form.sign-in button");
  await page.waitForSelector("[data-testid=role]");
  seen[`${role}Role`] = (await page.textContent("[data-testid=role]")).trim();
  // Set once: still there at the end means the page was never reloaded.
  await page.evaluate(() => (window.__sameDocument = true));
  return { context, page };
}

// Moves to `hash` and waits until the page drew the new view (not the last one's notices).
async function go(page, hash) {
  process.stderr.write(`at ${hash.slice(0, 60)}\n`);
  await page.evaluate((h) => {
    document.querySelector("main")?.setAttribute("data-left", "");
    location.hash = h;
  }, hash);
  await page.waitForFunction(() => {
    const main = document.querySelector("main");
    return main !== null && !main.hasAttribute("data-left");
  });
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: `${shots}/${name}.png`, fullPage: false });
}

const text = (page, selector) => page.locator(selector).first().innerText();

async function waitText(page, selector, wanted) {
  await page.waitForFunction(
    ([s, w]) => [...document.querySelectorAll(s)].some((e) => e.textContent.includes(w)),
    [selector, wanted],
  );
}

const browser = await chromium.launch({
  executablePath: process.env.SHOP_TEST_CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  // A client key: it may look, not act.
  {
    const { context, page } = await open(browser, clientKey, "client");
    await go(page, `#/sagas/${fixtures.failed}`);
    await waitText(page, "[data-testid=saga-state]", "failed");
    const retry = page.locator("[data-testid=retry-saga]");
    seen.client = { retryDisabled: await retry.isDisabled() };
    await retry.click({ force: true, timeout: 2000 }).catch(() => {});
    await go(page, "#/health");
    await page.waitForSelector("[data-testid=lag]");
    await waitText(page, "main .notice", "operator keys only");
    seen.client.deadLetters = await page.locator("main").innerText();
    seen.client.skipButtons = await page.locator("[data-testid=skip-dead-letter]").count();
    seen.client.storage = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
    await context.close();
  }

  const { context, page } = await open(browser, operatorKey, "operator");

  // Sagas: an order placed while the list is open shows up and completes by itself.
  await go(page, "#/sagas");
  await page.waitForSelector("[data-testid=saga-counts] .count");
  const placed = await placeOrder();
  seen.order = placed.id;
  await page.waitForFunction(
    (id) =>
      [...document.querySelectorAll("[data-testid=sagas] tr")].some(
        (row) => row.textContent.includes(id) && row.textContent.includes("completed"),
      ),
    placed.id,
    { timeout: 30000 },
  );
  seen.counts = await text(page, "[data-testid=saga-counts]");
  await shot(page, "sagas");

  // Its timeline, then its causal tree, then one event of it.
  await page.click(`a[href="#/sagas/${placed.id}"]`);
  await waitText(page, "[data-testid=saga-state]", "completed");
  seen.timeline = await text(page, "[data-testid=timeline]");
  await page.waitForSelector("[data-testid=saga-commands]");
  seen.sagaCommands = await text(page, "[data-testid=saga-commands]");
  await shot(page, "saga");
  await page.click("[data-testid=explain-link]");
  // The tree is drawn again as the event index catches up with the saga's last event.
  await waitText(page, "[data-testid=explain-tree]", "NotificationSent");
  seen.explainUrl = page.url();
  seen.treeEvents = await page.$$eval("[data-testid=tree-event]", (links) => links.map((a) => a.textContent));
  seen.treeKinds = await page.$$eval("[data-testid=explain-tree] li", (items) => items.map((li) => li.dataset.kind));
  await shot(page, "explain");
  await page.locator("[data-testid=tree-event]", { hasText: "OrderPlaced" }).first().click();
  await page.waitForSelector("details[open][data-testid=event] .record");
  seen.openedEvent = await text(page, "details[open][data-testid=event]");

  // The order: its read model, its events, and its state as of version 1.
  await go(page, `#/orders/${placed.id}`);
  await page.waitForSelector("[data-testid=as-of-state] pre");
  seen.orderEvents = await page.locator("[data-testid=event]").count();
  await page.locator("[data-testid=version-slider]").fill("1");
  await waitText(page, "[data-testid=as-of-version]", "version 1");
  await waitText(page, "[data-testid=as-of-state]", '"status": "pending"');
  seen.asOfOne = await text(page, "[data-testid=as-of-state]");
  await shot(page, "order");

  // A failed saga: the operator's retry.
  await go(page, `#/sagas/${fixtures.failed}`);
  await waitText(page, "[data-testid=saga-state]", "failed");
  seen.operatorRetryDisabled = await page.locator("[data-testid=retry-saga]").isDisabled();
  await page.click("[data-testid=retry-saga]");
  await page.waitForSelector("[data-testid=retry-outcome] .notice");
  seen.retried = await text(page, "[data-testid=retry-outcome] .notice");

  // The read side: lag, and the parked record skipped.
  await go(page, "#/health");
  await page.waitForSelector("[data-testid=lag] tbody tr");
  await waitText(page, "[data-testid=dead-letters]", fixtures.poisoned);
  seen.lag = await text(page, "[data-testid=lag]");
  await shot(page, "health");
  await page
    .locator("[data-testid=dead-letters] tr", { hasText: fixtures.poisoned })
    .locator("[data-testid=skip-dead-letter]")
    .click();
  await page.waitForSelector("main .notice.ok");
  seen.skipped = await text(page, "main .notice.ok");
  await page.waitForFunction(
    (id) => !(document.querySelector("[data-testid=dead-letters]")?.textContent ?? "").includes(id),
    fixtures.poisoned,
  );
  seen.afterSkip = await page.locator("main").innerText();

  // A live tail: a new order's record arrives; paused, the next one waits for resume.
  await go(page, `#/tail/${fixtures.ordersTopic}`);
  await waitText(page, "[data-testid=tail-status]", "live");
  const tailed = await placeOrder();
  // Both of its records (placed, then confirmed by its saga) arrive live.
  await page.waitForFunction(
    (id) => document.querySelectorAll(`[data-testid=tail-records] .record[data-key="${id}"]`).length >= 2,
    tailed.id,
  );
  await shot(page, "tail");
  await page.click("text=Pause");
  const held = await placeOrder();
  await waitText(page, "[data-testid=tail-status]", "held");
  seen.whilePaused = {
    shown: (await page.locator("[data-testid=tail-records]").innerText()).includes(held.id),
    status: await text(page, "[data-testid=tail-status]"),
  };
  await page.click("text=Resume");
  await waitText(page, "[data-testid=tail-records]", held.id);
  seen.resumed = true;

  // Streams: every topic with its ends.
  await go(page, "#/streams");
  await page.waitForSelector("[data-testid=topics] tbody tr");
  seen.topics = await page.$$eval("[data-testid=topics] tbody tr td:first-child", (cells) => cells.map((c) => c.textContent));
  await shot(page, "streams");

  // Bad input: each gets a message, never a blank page.
  const messages = {};
  for (const [name, hash] of [
    ["explainNotAnId", "#/explain/not-a-uuid"],
    ["unknownOrder", "#/orders/00000000-0000-4000-8000-000000000000"],
    ["notAnId", "#/orders/12345"],
    ["searchTooLong", `#/search/${"x".repeat(300)}`],
    ["nothingFound", "#/search/no-such-thing"],
    ["unknownSaga", "#/sagas/00000000-0000-4000-8000-000000000000"],
    ["noSuchPage", "#/nowhere"],
  ]) {
    await go(page, hash);
    await page.waitForSelector("main .notice.error, main .notice.info:not(:empty)");
    await page.waitForFunction(() => !document.querySelector("main").textContent.includes("…"));
    messages[name] = await page.locator("main").innerText();
  }
  seen.messages = messages;

  // The console's API goes away: the page says so.
  process.stderr.write("dead?\n");
  const lines = createInterface({ input: process.stdin });
  await new Promise((resolve) => lines.once("line", resolve));
  lines.close();
  process.stdin.destroy();
  await go(page, "#/streams");
  await page.waitForSelector("main .notice.error", { timeout: 30000 });
  seen.deadBackend = await text(page, "main .notice.error");

  seen.sameDocument = await page.evaluate(() => window.__sameDocument === true);
  seen.violations = await page.evaluate(() => window.__violations);
  seen.finalUrl = page.url();
  seen.storage = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  seen.cookies = await context.cookies();
} catch (e) {
  seen.failure = String(e.stack || e);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen));
