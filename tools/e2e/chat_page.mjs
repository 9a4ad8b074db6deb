// End to end: the web chat page served by `lumind serve`, in headless
// Chromium. Types a question, sees the answer arrive in pieces, asks again
// (the history is sent along), resets. With KEY (a server run with
// --api-key KEY), first checks that the page says a key is needed, then
// enters it. Usage: node chat_page.mjs URL [SCREENSHOT] [KEY]
import { chromium } from 'playwright-core';

const [url, shot, key] = process.argv.slice(2);
const fail = (msg) => { console.error('FAIL: ' + msg); process.exit(1); };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  const requests = [];
  page.on('request', (r) => { if (!r.url().startsWith(url)) requests.push(r.url()); });
  await page.goto(url);
  if (key) {
    await page.fill('#input', 'Hello?');
    await page.click('#send');
    await page.waitForSelector('.msg.assistant[data-done]', { timeout: 60000 });
    const refused = await page.locator('.msg.assistant').first().textContent();
    if (!refused.includes('API key')) fail('without the key the page should say one is needed: ' + refused);
    await page.fill('#key', key);
    await page.dispatchEvent('#key', 'change');
    await page.click('#reset');
  }
  await page.waitForFunction(() => document.getElementById('model').textContent.length > 0);
  await page.fill('#max_tokens', '120');
  await page.fill('#seed', '1');

  // count the changes to the answer bubble while it streams (records, not
  // callbacks: a fast server delivers several events in one network read)
  await page.evaluate(() => {
    window.updates = 0;
    new MutationObserver((records) => { window.updates += records.length; }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
  });
  await page.fill('#input', 'Hello! Who are you?');
  await page.click('#send');
  await page.waitForSelector('.msg.assistant[data-done]', { timeout: 60000 });
  const first = await page.locator('.msg.assistant').first();
  if (await first.getAttribute('data-done') !== '1') fail('the reply ended in an error: ' + await first.textContent());
  const answer = await first.textContent();
  const updates = await page.evaluate(() => window.updates);
  if (!answer || answer.length === 0) fail('empty answer');
  if (updates < 4) fail(`the answer did not stream (only ${updates} updates)`);
  if (!(await page.textContent('#status')).includes('tokens/s')) fail('no tokens/s after the reply');

  // a second turn keeps the history
  await page.fill('#input', 'And again?');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => document.querySelectorAll('.msg.assistant[data-done]').length === 2, null, { timeout: 60000 });
  if (await page.locator('.msg.user').count() !== 2) fail('history lost');
  if (shot) await page.screenshot({ path: shot, fullPage: true });

  // reset clears it
  await page.click('#reset');
  if (await page.locator('.msg').count() !== 0) fail('reset did not clear the conversation');
  if (requests.length) fail('the page loaded something from elsewhere: ' + requests.join(', '));
  console.log(`ok: streamed answer of ${answer.length} characters in ${updates} updates; second turn and reset work` +
    (key ? '; asked for the API key, then worked with it' : ''));
} finally {
  await browser.close();
}
