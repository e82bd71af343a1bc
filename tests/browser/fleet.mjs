// Drives the dashboard of one server of a fleet in headless Chromium:
//   node fleet.mjs BASE_URL THIS OTHER MAC SCREENSHOT.png
// BASE_URL is server THIS's management listener; the machine MAC was answered by server OTHER.
// Checks that the page lists both servers live (THIS marked as this server), that OTHER is
// counted as the server that last answered one machine, that the machine's row and at least
// one event name OTHER as the server that did it. Exit 0 on success; on failure prints why and
// still writes the screenshot.
import { chromium } from "playwright-core";

const [base, self, other, mac, shot] = process.argv.slice(2);
if (!shot) {
  console.error("usage: node fleet.mjs BASE_URL THIS OTHER MAC SCREENSHOT.png");
  process.exit(2);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = null;
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
page.on("console", (m) => console.log("page console:", m.type(), m.text()));
try {
  await page.goto(base + "/", { waitUntil: "load", timeout: 20000 });
  await page.locator("#fleet").waitFor({ state: "visible", timeout: 20000 });
  const row = (name) => page.locator(`#servers tr[data-name="${name}"]`);
  await row(self).locator("td.state", { hasText: /^live \(this server\)$/ }).waitFor({ timeout: 10000 });
  await row(other).locator("td.state", { hasText: /^live$/ }).waitFor({ timeout: 10000 });
  await row(other).locator("td.answered", { hasText: /^1$/ }).waitFor({ timeout: 10000 });
  await row(self).locator("td.answered", { hasText: /^0$/ }).waitFor({ timeout: 10000 });
  await page.locator(`#machines tr[data-mac="${mac}"] td.server`, { hasText: other }).waitFor({ timeout: 10000 });
  await page.locator("#events td.server", { hasText: other }).first().waitFor({ timeout: 10000 });
  await page.locator("#info", { hasText: `server ${self}` }).waitFor({ timeout: 10000 });
  console.log("dashboard: the fleet's servers, and which server answered the machine, OK");
} catch (err) {
  failed = err;
}
await page.screenshot({ path: shot, fullPage: true }).catch((e) => console.error("screenshot:", e.message));
await browser.close();
if (failed) {
  console.error("fleet dashboard test failed:", failed.message);
  process.exit(1);
}
