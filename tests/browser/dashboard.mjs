// Drives chainboot's dashboard in headless Chromium, as an operator would:
//   node dashboard.mjs BASE_URL TOKEN MAC PROFILE SCREENSHOT.png
// Checks that the machine shows up with its boot timeline, that the live stream connects,
// and sets the machine's profile through the page (token typed into the prompt), which the
// events table then shows as an operator event (from the live stream).
// Exit 0 on success; on failure prints why and still writes the screenshot.
import { chromium } from "playwright-core";

const [base, token, mac, profile, shot] = process.argv.slice(2);
if (!shot) {
  console.error("usage: node dashboard.mjs BASE_URL TOKEN MAC PROFILE SCREENSHOT.png");
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
  const row = page.locator(`#machines tr[data-mac="${mac}"]`);
  await row.waitFor({ timeout: 20000 });
  // The last boot's timeline: first stage and script at least.
  await row.locator('.bar span[data-stage="first-stage"]').waitFor({ timeout: 10000 });
  await row.locator('.bar span[data-stage="script"]').waitFor({ timeout: 10000 });
  await page.locator("#live", { hasText: "live" }).waitFor({ timeout: 10000 });
  // Set the profile through the page.
  await row.locator("button.edit").click();
  await page.locator("#edit-profile").selectOption(profile);
  await page.locator("#edit-token").fill(token);
  await page.locator("#edit-save").click();
  await row.locator(".profile", { hasText: `${profile} (pinned)` }).waitFor({ timeout: 10000 });
  // The change is an operator event, on the live stream into the events table.
  await page.locator("#events tr", { hasText: `operator profile: null → "${profile}"` })
    .waitFor({ timeout: 10000 });
  console.log("dashboard: machine, timeline, live stream, profile change and its operator event OK");
} catch (err) {
  failed = err;
}
await page.screenshot({ path: shot, fullPage: true }).catch((e) => console.error("screenshot:", e.message));
await browser.close();
if (failed) {
  console.error("dashboard test failed:", failed.message);
  process.exit(1);
}
