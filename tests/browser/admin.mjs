// Drives the admin console in headless Chromium: signs in (the filter asked for survives the
// sign-in), walks every page, applies a filter, bulk-cancels a selection after its confirmation,
// replays a dead letter, runs a schedule now, pauses and resumes a queue, checks bad input,
// keyboard order, a phone-width layout, the read-only role (no buttons, its posts refused),
// sign-out and a lost session. Saves a screenshot of each page in OUT_DIR and prints a JSON
// report for tests/admin_browser.rs to check.
// Usage: node admin.mjs BASE_URL ADMIN_TOKEN READONLY_TOKEN DEAD_LETTER_ID ADDRESS OUT_DIR
// Env: PLAYWRIGHT_CORE (path of the playwright-core package), CHROMIUM_BIN (browser binary).
import { createRequire } from "module";
import path from "path";

const [base, adminToken, readonlyToken, deadId, address, outDir] = process.argv.slice(2);
if (!outDir) {
  console.error("usage: node admin.mjs BASE_URL ADMIN_TOKEN READONLY_TOKEN DEAD_LETTER_ID ADDRESS OUT_DIR");
  process.exit(2);
}
const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const report = { screenshots: [], page_errors: [], pages: {} };
const shot = async (page, name) => {
  const file = path.join(outDir, name + ".png");
  await page.screenshot({ path: file, fullPage: true });
  report.screenshots.push(file);
};
const text = async (page, sel) => (await page.locator(sel).first().innerText()).replace(/\s+/g, " ").trim();
const watch = (page) => {
  page.on("pageerror", (e) => report.page_errors.push(String(e)));
  // Errors of the page's own (CSP violations, script errors); answers with an error status, which
  // this run asks for on purpose, are not.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) report.page_errors.push(m.text());
  });
};
const signIn = async (page, token) => {
  await page.locator("input[name=token]").fill(token);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
};

try {
  // --- Admin at 1280×800 ------------------------------------------------------------------
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await desk.newPage();
  watch(page);
  await page.goto(base + "/admin/jobs?kind=noop&q=batch");
  report.login_url = new URL(page.url()).pathname + new URL(page.url()).search;
  await shot(page, "01-sign-in");
  await signIn(page, adminToken);
  report.after_login = new URL(page.url()).pathname + new URL(page.url()).search;
  const cookies = await desk.cookies();
  const session = cookies.find((c) => c.name === "chainsync_session") || {};
  report.cookie = { httpOnly: session.httpOnly, sameSite: session.sameSite, expires: session.expires, path: session.path };
  report.document_cookie = await page.evaluate(() => document.cookie);

  // Every page.
  await page.goto(base + "/admin");
  await page.locator("svg.chart").waitFor();
  report.pages.overview = await text(page, "main");
  await shot(page, "02-overview");
  // Keyboard: skip link first, then the menu.
  const focused = [];
  for (let i = 0; i < 4; i++) {
    await page.keyboard.press("Tab");
    focused.push(await page.evaluate(() => (document.activeElement.innerText || document.activeElement.getAttribute("name") || "").trim()));
  }
  report.tab_order = focused;
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Enter"); // the skip link
  report.after_skip = await page.evaluate(() => document.activeElement.id);

  await page.goto(base + "/admin/jobs");
  report.pages.jobs_rows = await page.locator("#jobs tbody tr").count();
  await shot(page, "03-jobs");
  // A filter through the form.
  await page.selectOption("select[name=state]", "available");
  await page.selectOption("select[name=kind]", "noop");
  await page.fill("input[name=q]", "batch");
  await Promise.all([page.waitForNavigation(), page.click("form.filters button[type=submit]")]);
  report.filtered_url = new URL(page.url()).search;
  report.filtered_rows = await page.locator("#jobs tbody tr").count();
  await shot(page, "04-jobs-filtered");
  // Bulk cancel of the filtered selection, after a confirmation that names the count.
  await page.selectOption("form.bulk select[name=action]", "cancel");
  await Promise.all([page.waitForNavigation(), page.click("#bulk-review")]);
  report.confirm_text = await text(page, "#confirm-text");
  await shot(page, "05-bulk-confirm");
  await Promise.all([page.waitForNavigation(), page.click("#bulk-confirm")]);
  report.bulk_message = await text(page, ".msg");
  report.rows_after_bulk = await page.locator("#jobs tbody tr td a").count();
  // A job's page.
  await page.goto(base + "/admin/jobs?kind=noop&state=cancelled");
  await Promise.all([page.waitForNavigation(), page.locator("#jobs tbody tr td a").first().click()]);
  report.pages.job = await text(page, "main");
  await shot(page, "06-job");

  // Dead letters: replay one.
  await page.goto(base + "/admin/dead");
  const row = page.locator("#dl-" + deadId);
  report.dead_letter_row = (await row.innerText()).replace(/\s+/g, " ").trim();
  await shot(page, "07-dead-letters");
  await Promise.all([page.waitForNavigation(), row.locator("button.replay").click()]);
  report.replay_message = await text(page, ".msg");
  report.dead_rows_after = await page.locator("#dl-" + deadId).count();
  await page.goto(base + "/admin/dead/" + deadId);
  report.replayed_redirect = new URL(page.url()).pathname;

  await page.goto(base + "/admin/schedules");
  report.pages.schedules = await text(page, "#schedules");
  await shot(page, "08-schedules");
  // Run a schedule now.
  await Promise.all([page.waitForNavigation(), page.click('tr[data-schedule="nightly-noop"] button.run')]);
  report.schedule_run_message = await text(page, ".msg");
  report.schedule_after_run = await text(page, 'tr[data-schedule="nightly-noop"]');
  await shot(page, "14-schedule-run-now");

  // Queues: pause one, then resume it.
  await page.goto(base + "/admin/queues");
  report.queue_before = await text(page, 'tr[data-queue="default"] .qstate');
  await Promise.all([page.waitForNavigation(), page.click('tr[data-queue="default"] button.pause')]);
  report.pause_message = await text(page, ".msg");
  report.queue_paused = await text(page, 'tr[data-queue="default"] .qstate');
  await shot(page, "15-queue-paused");
  await Promise.all([page.waitForNavigation(), page.click('tr[data-queue="default"] button.resume')]);
  report.resume_message = await text(page, ".msg");
  report.queue_resumed = await text(page, 'tr[data-queue="default"] .qstate');

  await page.goto(base + "/admin/chain");
  await page.fill("input[name=address]", address);
  await Promise.all([page.waitForNavigation(), page.keyboard.press("Enter")]);
  report.pages.balances = await text(page, "#balances");
  report.pages.changes = await text(page, "#changes");
  report.pages.points = await text(page, "#points");
  report.pages.mismatches = await text(page, "#mismatches");
  report.pages.txs = await text(page, "#txs");
  await shot(page, "09-chain-data");

  // Bad input: a message on the page.
  const bad = await page.goto(base + "/admin/jobs?from=yesterday&state=nope");
  report.bad_status = bad.status();
  report.bad_messages = await page.locator(".msg-error").allInnerTexts();
  await shot(page, "10-bad-filter");
  const badChain = await page.goto(base + "/admin/chain?address=0x12");
  report.bad_chain_status = badChain.status();

  report.storage = await page.evaluate(() => window.localStorage.length + window.sessionStorage.length);

  // A lost session: back to sign-in, and the filter survives it.
  await desk.clearCookies();
  await page.goto(base + "/admin/dead?kind=noop");
  report.lost_session_url = new URL(page.url()).pathname + new URL(page.url()).search;
  await signIn(page, adminToken);
  report.after_relogin = new URL(page.url()).pathname + new URL(page.url()).search;

  // Sign out.
  await Promise.all([page.waitForNavigation(), page.click("header form button")]);
  report.after_logout = new URL(page.url()).pathname;
  await page.goto(base + "/admin");
  report.after_logout_visit = new URL(page.url()).pathname;

  // --- Phone width --------------------------------------------------------------------------
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const p2 = await phone.newPage();
  watch(p2);
  await p2.goto(base + "/admin/jobs");
  await signIn(p2, adminToken);
  report.phone_overflow = await p2.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await shot(p2, "11-phone-jobs");
  await p2.goto(base + "/admin");
  report.phone_overview_overflow = await p2.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  await shot(p2, "12-phone-overview");

  // --- Read-only ----------------------------------------------------------------------------
  const ro = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const p3 = await ro.newPage();
  watch(p3);
  await p3.goto(base + "/admin/dead");
  await signIn(p3, readonlyToken);
  report.readonly_role = await text(p3, ".role");
  report.readonly_replay_buttons = await p3.locator("button.replay").count();
  report.readonly_bulk_forms = await p3.locator("form.bulk").count();
  await p3.goto(base + "/admin/jobs");
  report.readonly_jobs_bulk_forms = await p3.locator("form.bulk").count();
  await shot(p3, "13-readonly-jobs");
  await p3.goto(base + "/admin/queues");
  report.readonly_queue_state = await text(p3, 'tr[data-queue="default"] .qstate');
  report.readonly_queue_forms = await p3.locator('form[action^="/admin/queues/"]').count();
  await shot(p3, "16-readonly-queues");
  await p3.goto(base + "/admin/schedules");
  report.readonly_schedule_forms = await p3.locator('form[action^="/admin/schedules/"]').count();
  report.readonly_pause_status = await p3.evaluate(async () => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const r = await fetch("/admin/queues/default/pause", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "csrf=" + encodeURIComponent(csrf),
    });
    return r.status;
  });
  // Posting anyway, with the session's own CSRF token: refused.
  report.readonly_post_status = await p3.evaluate(async (id) => {
    const csrf = document.querySelector("input[name=csrf]").value;
    const r = await fetch("/admin/dead/" + id + "/purge", {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "csrf=" + encodeURIComponent(csrf),
    });
    return r.status;
  }, deadId);

  console.log(JSON.stringify(report));
} finally {
  await browser.close();
}
