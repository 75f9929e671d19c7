// Drives the admin page in headless Chromium: loads it with the token, checks the queue depth and
// the dead letter with its error are shown, clicks Replay, and waits for the row to go.
// Usage: node admin.mjs BASE_URL TOKEN DEAD_LETTER_ID SCREENSHOT_PATH
// Env: PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM_BIN (browser binary).
import { createRequire } from "module";

const [base, token, deadId, screenshot] = process.argv.slice(2);
if (!base || !token || !deadId || !screenshot) {
  console.error("usage: node admin.mjs BASE_URL TOKEN DEAD_LETTER_ID SCREENSHOT_PATH");
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = {};
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(base + "/admin");
  await page.fill("#token", token);
  await page.click("#load");
  const row = page.locator("#dl-" + deadId);
  await row.waitFor({ timeout: 10000 });
  report.dead_letter_row = (await row.innerText()).replace(/\s+/g, " ").trim();
  report.counts_rows = await page.locator("#counts tbody tr").count();
  report.counts_text = (await page.locator("#counts tbody").innerText()).replace(/\s+/g, " ").trim();
  await page.screenshot({ path: screenshot, fullPage: true });
  await row.locator("button.replay").click();
  await row.waitFor({ state: "detached", timeout: 10000 });
  report.status = await page.locator("#status").innerText();
  report.dead_rows_after = await page.locator("#dead tbody tr").count();
  report.page_errors = errors;
  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
