// Shared by the test files (not a test file itself: the runner takes `*.test.mjs`).

/**
 * Resolves once `predicate()` is true, checking every `everyMs`; rejects after `guardMs`
 * naming `what`.
 */
export function waitFor(predicate, what, guardMs, everyMs) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const tick = () => {
      if (predicate()) return resolve();
      if (Date.now() - started > guardMs) return reject(new Error(`timed out waiting for ${what}`));
      setTimeout(tick, everyMs);
    };
    tick();
  });
}
