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
