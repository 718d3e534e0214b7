// Drives headless Chromium for crates/tether/tests/browser.rs:
//
//   node run.mjs PAGE_URL WS_URL
//
// Opens PAGE_URL (page.html, served by the test over http://127.0.0.1), calls the page's
// runTether(WS_URL) and prints the browser's version (`BROWSER Chromium N`), then the result
// as one line: `RESULT {json}`. A failure prints
// `RESULT {"error": ...}` and exits 1. Chromium comes from $TETHER_CHROMIUM, else
// /usr/bin/chromium (Debian's package); playwright-core from ./node_modules (`npm ci` here;
// scripts/test.sh does it).
//
// Nothing may leave the machine: every request to a host other than 127.0.0.1 is aborted, name
// resolution maps every other name to nothing, and Chromium's background services are off.

import { drive } from "./launch.mjs";

const [pageUrl, wsUrl] = process.argv.slice(2);
if (!pageUrl || !wsUrl) {
  console.error("usage: node run.mjs PAGE_URL WS_URL");
  process.exit(2);
}

function local(url) {
  const u = new URL(url);
  return u.hostname === "127.0.0.1" && ["http:", "ws:"].includes(u.protocol);
}

if (!local(pageUrl) || !local(wsUrl)) {
  console.log(
    `RESULT ${JSON.stringify({ error: `only http:// and ws:// URLs on 127.0.0.1 are allowed: ${pageUrl} ${wsUrl}` })}`,
  );
  process.exit(1);
}

await drive({
  // Every request to another host is aborted (and name resolution finds none).
  prepare: (context) =>
    context.route("**/*", (route) => {
      const url = route.request().url();
      if (local(url)) {
        return route.continue();
      }
      console.error(`blocked a request off the machine: ${url}`);
      return route.abort("blockedbyclient");
    }),
  pageUrl,
  evaluate: (page) => page.evaluate((url) => window.runTether(url), wsUrl),
});
