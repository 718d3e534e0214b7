// Drives headless Chromium for the RFC 8441 test in crates/tether/tests/browser_h2.rs:
//
//   node h2.mjs PAGE_URL
//
// Opens PAGE_URL (https://127.0.0.1:PORT/, served by hyper over HTTP/2 with a self-signed
// certificate, hence --ignore-certificate-errors), waits for the page's `window.result` and
// prints `BROWSER Chromium N` and `RESULT {json}`. The page opens a WebSocket to its own
// origin; whether Chromium sent it over the page's HTTP/2 connection (extended CONNECT) is
// what the test checks on the server's side. Nothing may leave the machine.

import { drive } from "./launch.mjs";

const [pageUrl] = process.argv.slice(2);
if (!pageUrl || new URL(pageUrl).hostname !== "127.0.0.1") {
  console.error("usage: node h2.mjs https://127.0.0.1:PORT/");
  process.exit(2);
}

await drive({
  extraFlags: ["--ignore-certificate-errors"],
  contextOptions: { ignoreHTTPSErrors: true },
  pageUrl,
  evaluate: (page) => page.evaluate(() => window.result),
});
