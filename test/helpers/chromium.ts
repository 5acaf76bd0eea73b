import fs from 'node:fs';

/**
 * A real headless Chromium (Debian's `chromium` package) driven by puppeteer-core. Tests that need
 * it skip, saying so, where it is not installed (apt-get install chromium).
 */
export const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p): p is string => !!p && fs.existsSync(p));
export const hasChromium = CHROMIUM !== undefined;

export async function launchChromium() {
  const puppeteer = await import('puppeteer-core');
  return puppeteer.default.launch({
    executablePath: CHROMIUM!,
    headless: true,
    // containers and CI runners rarely allow Chromium's own sandbox
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    protocolTimeout: 120_000,
  });
}
