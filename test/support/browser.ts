/**
 * A real browser for the UI tests: Debian's chromium driven by playwright-core.
 * Nothing is downloaded: the browser is the system's, and on a machine without
 * it the UI tests skip with a reason, except on CI where they must run.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, chromium, type Page } from 'playwright-core';

/** Debian's package `chromium`; CHROMIUM_PATH points elsewhere (another distribution, a local build). */
export const CHROMIUM_PATH = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * The closed network refuses Chromium's own background connections (updates,
 * sync, QUIC probes), so they are switched off; `--no-sandbox` because tests
 * may run as root in a container.
 */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];

/** Screenshots are test artifacts, kept in the git-ignored test-results/ui/. */
export const SCREENSHOT_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'test-results', 'ui');

export const onCI = (): boolean => Boolean(process.env.CI) && process.env.CI !== 'false';

/**
 * Why the browser tests cannot run here, or undefined when they can. On CI a
 * missing browser or UI is an error, not a skip: CI must exercise the UI.
 */
export function browserTestsUnavailable(uiUrl: string | undefined): string | undefined {
  const problems: string[] = [];
  if (!existsSync(CHROMIUM_PATH)) {
    problems.push(
      `${CHROMIUM_PATH} is missing (install it with \`apt-get install -y chromium\`, or set CHROMIUM_PATH to a Chromium binary)`,
    );
  }
  if (!uiUrl) {
    problems.push(
      'no Temporal Web UI to open (the tests use a server from TEMPORAL_ADDRESS; set TEMPORAL_UI_URL to its UI)',
    );
  }
  if (problems.length === 0) return undefined;
  const reason = `UI tests cannot run: ${problems.join('; ')}`;
  if (onCI()) throw new Error(`${reason}. On CI they must run: .ci/run installs chromium when it is missing.`);
  return reason;
}

export async function launchChromium(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS });
}

/** A page sized like a laptop screen held upright, so a whole stop's history fits in one screenshot. */
export async function newPage(browser: Browser): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 2600 } });
  // A loaded 2-core machine runs tests in parallel: be patient, but never sleep.
  page.setDefaultTimeout(60_000);
  page.setDefaultNavigationTimeout(90_000);
  return page;
}

/** Saves a full-page screenshot as test-results/ui/<name>.png and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  const path = join(SCREENSHOT_DIR, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}
