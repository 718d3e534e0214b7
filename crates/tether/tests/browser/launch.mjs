// Starts headless Chromium for the browser tests' drivers (run.mjs, h2.mjs): Debian's
// /usr/bin/chromium or $TETHER_CHROMIUM, with background services off and every host name
// but 127.0.0.1 unresolvable, so that nothing leaves the machine. launch() makes a fresh user
// data directory and removes it on close.

import { chromium } from "playwright-core";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

export function launchChromium(extraFlags = []) {
  return chromium.launch({
    executablePath: process.env.TETHER_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [...FLAGS, ...extraFlags],
    timeout: 60000,
  });
}

/**
 * Runs one driver: launches Chromium (with `extraFlags`), makes a context (`contextOptions`,
 * then `prepare(context)`), opens `pageUrl`, and prints `BROWSER Chromium N` and
 * `RESULT {json}` with what `evaluate(page)` returned. A failure prints
 * `RESULT {"error": ...}`; the process exits 1 then, 0 otherwise.
 */
export async function drive({ extraFlags = [], contextOptions = {}, prepare, pageUrl, evaluate }) {
  let browser;
  let code = 0;
  try {
    browser = await launchChromium(extraFlags);
    const context = await browser.newContext({ serviceWorkers: "block", ...contextOptions });
    if (prepare) await prepare(context);
    const page = await context.newPage();
    page.on("console", (msg) => console.error(`page console: ${msg.text()}`));
    page.on("pageerror", (err) => console.error(`page error: ${err}`));
    await page.goto(pageUrl, { timeout: 30000 });
    const result = await evaluate(page);
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
}
