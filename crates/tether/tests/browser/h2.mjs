// Drives headless Chromium for the RFC 8441 test in crates/tether/tests/browser_h2.rs:
//
//   node h2.mjs PAGE_URL
//
// Opens PAGE_URL (https://127.0.0.1:PORT/, served by hyper over HTTP/2 with a self-signed
// certificate, hence --ignore-certificate-errors), waits for the page's `window.result` and
// prints `BROWSER Chromium N` and `RESULT {json}`. The page opens a WebSocket to its own
// origin; whether Chromium sent it over the page's HTTP/2 connection (extended CONNECT) is
// what the test checks on the server's side. Nothing may leave the machine.

import { launchChromium } from "./launch.mjs";

const [pageUrl] = process.argv.slice(2);
if (!pageUrl || new URL(pageUrl).hostname !== "127.0.0.1") {
  console.error("usage: node h2.mjs https://127.0.0.1:PORT/");
  process.exit(2);
}

let browser;
let code = 0;
try {
  browser = await launchChromium(["--ignore-certificate-errors"]);
  const context = await browser.newContext({ ignoreHTTPSErrors: true, serviceWorkers: "block" });
  const page = await context.newPage();
  page.on("console", (msg) => console.error(`page console: ${msg.text()}`));
  page.on("pageerror", (err) => console.error(`page error: ${err}`));
  await page.goto(pageUrl, { timeout: 30000 });
  const result = await page.evaluate(() => window.result);
  console.log(`BROWSER Chromium ${browser.version()}`);
  console.log(`RESULT ${JSON.stringify(result)}`);
} catch (err) {
  console.log(`RESULT ${JSON.stringify({ error: String(err && err.stack ? err.stack : err) })}`);
  code = 1;
} finally {
  if (browser) {
    await browser.close().catch(() => {});
  }
}
process.exit(code);
