// The /demo page in a real headless Chromium (Debian's `chromium`, driven by playwright-core; no
// downloaded browser). Run by `make demo-check` against a running `make demo`:
//
//   DEMO_URL=http://127.0.0.1:8080 [DEMO_USER_ID=uuid] [SCREENSHOT=artifacts/demo-page.png] \
//     [FEEDRANK_REASONS=similar_users,...] node --test tests/e2e/demo_page.test.mjs
//
// What it protects: a person who opens /demo can pick a demo user, sees that user's recommended
// feed (each post with a reason and a score) beside the random fallback, and a like or a hide is
// tracked by the API (201) and honoured (a hidden post is left out of the next feed).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BASE = (process.env.DEMO_URL || "http://127.0.0.1:8080").replace(/\/$/, "");
const SCREENSHOT = resolve(ROOT, process.env.SCREENSHOT || "artifacts/demo-page.png");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
// The core's reasons (`feedrank.reason_names()`, passed by demo_check.py); the default is that
// list as of writing, for a run by hand.
const REASONS = (process.env.FEEDRANK_REASONS ||
  "similar_users,similar_content,fresh,popular,liked_author,because_you_liked,trending").split(",");

test("the /demo page shows a user's feed beside the fallback and tracks likes and hides", async () => {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") pageErrors.push(m.text()); });

    const resp = await page.goto(`${BASE}/demo`);
    assert.equal(resp.status(), 200, "GET /demo");
    assert.equal(await page.title(), "feedrank demo");

    // The user list comes from GET /demo/users (FEEDRANK_DEMO=1).
    const select = page.locator("#user");
    await select.waitFor();
    await page.waitForFunction(() => !document.querySelector("#user").disabled, null, { timeout: 15000 });
    const values = await select.locator("option").evaluateAll((os) => os.map((o) => o.value).filter(Boolean));
    assert.ok(values.length > 0, "the demo user list is empty");
    const userId = process.env.DEMO_USER_ID && values.includes(process.env.DEMO_USER_ID)
      ? process.env.DEMO_USER_ID : values[0];
    await select.selectOption(userId);

    // Recommended column: posts with a reason and a score, from the cache or the table.
    const rec = page.locator("#recommended");
    await rec.locator("li.post[data-post-id]").first().waitFor({ timeout: 15000 });
    const recSource = await rec.locator("[data-testid=source]").textContent();
    assert.ok(["cache", "db"].includes(recSource), `recommended source is ${recSource}`);
    const recPosts = await rec.locator("li.post[data-post-id]").evaluateAll((lis) => lis.map((li) => ({
      id: li.dataset.postId,
      reason: li.querySelector(".reason").textContent,
      score: li.querySelector(".score").textContent,
    })));
    assert.ok(recPosts.length >= 2, `only ${recPosts.length} recommended posts`);
    for (const p of recPosts) {
      assert.ok(REASONS.includes(p.reason), `reason of ${p.id}: ${p.reason}`);
      assert.match(p.score, /^score -?\d+\.\d{3}$/, `score of ${p.id}`);
    }

    // Fallback column, beside it.
    const fb = page.locator("#fallback");
    await fb.locator("li.post[data-post-id]").first().waitFor({ timeout: 15000 });
    assert.equal(await fb.locator("[data-testid=source]").textContent(), "fallback");

    // Like the first recommended post, hide the second: both tracked with 201.
    const [first, second] = recPosts;
    await rec.locator(`li.post[data-post-id="${first.id}"] button.like`).click();
    await page.locator("[data-testid=tracked]", { hasText: `201 like post ${first.id}` }).waitFor({ timeout: 10000 });
    await rec.locator(`li.post[data-post-id="${second.id}"] button.hide`).click();
    await page.locator("[data-testid=tracked]", { hasText: `201 hide post ${second.id}` }).waitFor({ timeout: 10000 });
    assert.match(await rec.locator(`li.post[data-post-id="${first.id}"] .state`).textContent(), /liked/);

    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    console.log(`screenshot: ${SCREENSHOT}`);

    // The hidden post is left out of the next feed (served again, bypassing the cache).
    await page.locator("#reload").click();
    await page.waitForFunction(
      (id) => !document.querySelector(`#recommended li.post[data-post-id="${id}"]`) &&
        document.querySelectorAll("#recommended li.post[data-post-id]").length > 0,
      second.id, { timeout: 15000 });

    assert.deepEqual(pageErrors, [], "errors in the page's console");
  } finally {
    await browser.close();
  }
});
