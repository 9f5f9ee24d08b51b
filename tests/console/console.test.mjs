// The web console in a real browser: Debian's Chromium, headless, driven by playwright-core
// over the DevTools protocol, against a local stack that tests/integration/console.rs
// started. Talks to 127.0.0.1 only. SCREENSHOTS=<dir> also saves the main views as PNGs.
//
// Environment: CONSOLE_URL, API_URL, MANAGER_TOKEN, MANAGER_ID, MEMBER_TOKEN, MEMBER_ID
// (the assignee of a task), CHROMIUM (default
// /usr/bin/chromium), TIME_FACTOR (default 1), SCREENSHOTS (optional).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set (tests/integration/console.rs sets it)`);
  return value;
};
const CONSOLE_URL = env('CONSOLE_URL');
const API_URL = env('API_URL');
const MANAGER_TOKEN = env('MANAGER_TOKEN');
const MANAGER_ID = env('MANAGER_ID');
const MEMBER_TOKEN = env('MEMBER_TOKEN');
const MEMBER_ID = env('MEMBER_ID');
const SCREENSHOTS = process.env.SCREENSHOTS || '';
const XSS_TITLE = '<img src=x onerror=alert(1)>';
// Waits on the stack's work (a chain step, a batch round), scaled like every end-to-end
// deadline by the machine's load (TIME_FACTOR, from tests/src/lib.rs time_factor()).
const WAIT = { timeout: 60_000 * Math.min(4, Math.max(1, Number(process.env.TIME_FACTOR) || 1)) };

for (const url of [CONSOLE_URL, API_URL]) {
  assert.equal(new URL(url).hostname, '127.0.0.1', `${url}: the test talks to 127.0.0.1 only`);
}

async function api(method, path, body) {
  const response = await fetch(`${API_URL}${path}`, {
    method,
    headers: { Authorization: `Bearer ${MANAGER_TOKEN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

// Batch items with "bad": true fail (HTTP 422) until `healed`; the http executor posts here.
let healed = false;
const receiver = http.createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    const bad = JSON.parse(body || '{}')?.input?.bad === true;
    res.writeHead(bad && !healed ? 422 : 200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(bad && !healed ? { error: 'item refused' } : { ok: true }));
  });
});

let browser;
let page;
const problems = [];

before(async () => {
  await new Promise((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  // launch() gives the browser a fresh, temporary profile (--user-data-dir) of its own.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  // Nothing may leave 127.0.0.1 (other names do not even resolve, see the launch flags).
  // Not a route on every request: intercepting makes Playwright answer CORS preflights
  // itself, which would hide whether storage answers the upload's preflight.
  page.on('request', (request) => {
    if (new URL(request.url()).hostname !== '127.0.0.1') problems.push(`request to ${request.url()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('dialog', (dialog) => { problems.push(`browser dialog: ${dialog.message()}`); dialog.dismiss(); });
  page.on('console', (msg) => {
    // A 401 the console handles on purpose is logged by the browser as a failed resource.
    if (msg.type() === 'error' && !/status of 40[0-9]/.test(msg.text())) problems.push(`console: ${msg.text()}`);
  });
});

after(async () => {
  await browser?.close();
  receiver.closeAllConnections();
  receiver.close();
});

async function shot(name) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

/** axe-core's WCAG A/AA rules on the current view: no violations. */
async function accessible(view) {
  const violations = await page.evaluate(async (source) => {
    if (!window.axe) (0, eval)(source);
    const result = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa'] } });
    return result.violations.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`);
  }, AXE_SOURCE);
  assert.deepEqual(violations, [], `${view}: accessibility violations`);
}

test('the console in a browser: sign in, queues, tasks, a chain and a batch', async (t) => {
  // Work the console will show, created through the API as a customer would.
  const xss = await api('POST', '/tasks', { title: XSS_TITLE, priority: 'high' });
  const attached = await api('POST', `/tasks/${xss.id}/attachments`, { fileName: 'notes.txt', contentType: 'text/plain' });
  const put = await fetch(attached.upload.url, { method: 'PUT', headers: attached.upload.headers, body: 'Draft figures\n' });
  assert.equal(put.status, 200, 'the attachment upload');
  const chain = await api('POST', '/tasks', {
    title: 'Contract review',
    type: 'multi_step',
    priority: 'critical',
    autoDispatch: true,
    steps: [
      { name: 'draft', config: {} },
      { name: 'check', config: {} },
      { name: 'review', dependsOn: ['draft', 'check'], config: { executor: { type: 'manual' }, assignedTo: MANAGER_ID } },
      { name: 'publish', dependsOn: ['review'], config: {} },
    ],
  });
  const chore = await api('POST', '/tasks', { title: 'File the Q3 report', assignedTo: MEMBER_ID });
  const receiverUrl = `http://127.0.0.1:${receiver.address().port}/items`;
  const items = Array.from({ length: 8 }, (_, n) => ({ n, bad: n % 4 === 1 }));
  const batch = await api('POST', '/batches', {
    title: 'Invoices', items, itemsPerBatch: 4, priority: 'high',
    executor: { type: 'http', config: { url: receiverUrl } },
  });

  await t.test('sign-in refuses a non-token and accepts a token from make token', async () => {
    await page.goto(CONSOLE_URL);
    await page.getByLabel('Access token').fill('not a token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('That is not a token').waitFor();
    await accessible('sign-in');
    // No tier breaches its SLA in a test run: the queues view gets one on the critical tier
    // (the real reply, changed on its way to the page) to show how it looks.
    await page.route('**/api/queues', async (route) => {
      const real = await (await route.fetch()).json();
      real.tiers[0] = { ...real.tiers[0], backlog: 42, oldestWaitingSeconds: 95, breachesLastHour: 3 };
      await route.fulfill({ json: real });
    });
    await page.getByLabel('Access token').fill(MANAGER_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Queues' }).waitFor();
    // Kept for this tab only, never in the address bar.
    assert.equal(await page.evaluate(() => sessionStorage.getItem('taskflow.token')), MANAGER_TOKEN);
    assert.ok(!page.url().includes(MANAGER_TOKEN.slice(-20)));
  });

  await t.test('the queues view shows every tier', async () => {
    await page.locator('tr[data-tier="critical"]').waitFor();
    assert.equal(await page.locator('tr[data-tier]').count(), 5);
    await page.getByText(/updated .* refreshes every/).waitFor();
    await accessible('queues');
    // A breach is red at a glance (the critical tier's figures were changed on the way).
    await page.locator('tr.breach[data-tier="critical"]').waitFor();
    assert.match(await page.getByRole('alert').innerText(), /SLA breached: critical/);
    assert.equal(await page.locator('tr.breach').count(), 1);
    await shot('queues');
    await page.unroute('**/api/queues');
  });

  await t.test('the task list shows tenant data as text', async () => {
    await page.getByRole('link', { name: 'Tasks', exact: true }).click();
    const link = page.getByRole('link', { name: XSS_TITLE });
    await link.waitFor();
    assert.equal(await page.locator('main img').count(), 0, 'a title became an element');
    await accessible('tasks');
    await shot('tasks');
    await link.click();
    await page.getByRole('heading', { name: XSS_TITLE }).waitFor();
  });

  await t.test('an attachment downloads through a presigned URL', async () => {
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.getByRole('button', { name: 'Download notes.txt' }).click(),
    ]);
    assert.equal(download.suggestedFilename(), 'notes.txt');
    assert.equal(readFileSync(await download.path(), 'utf8'), 'Draft figures\n');
    await page.getByRole('heading', { name: XSS_TITLE }).waitFor();
  });

  await t.test('an API refusal is shown in words', async () => {
    await page.getByLabel('Assign to (user id)').fill('no spaces allowed');
    await page.getByRole('button', { name: 'Assign', exact: true }).click();
    const alert = page.getByRole('alert');
    await alert.waitFor();
    assert.match(await alert.innerText(), /validation failed.*assignedTo/i);
  });

  await t.test('cancelling asks first, then the status changes', async () => {
    await page.getByRole('button', { name: 'Cancel task' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor();
    assert.match(await dialog.innerText(), /cannot be reopened/);
    await dialog.getByRole('button', { name: 'Keep it' }).click();
    assert.equal(await page.locator('#task-status').innerText(), 'pending');
    await page.getByRole('button', { name: 'Cancel task' }).click();
    await dialog.getByRole('button', { name: 'Cancel task' }).click();
    await page.locator('#task-status', { hasText: 'cancelled' }).waitFor();
    await accessible('task detail');
    await shot('task');
    assert.equal((await api('GET', `/tasks/${xss.id}`)).status, 'cancelled');
  });

  await t.test('the chain waits on its manual step, which is completed from the console', async () => {
    await page.getByRole('link', { name: 'Chains' }).click();
    await page.getByRole('link', { name: 'Contract review' }).click();
    await page.locator('g.node[data-step="review"][data-status="waiting"]').waitFor(WAIT);
    assert.equal(await page.locator('g.node').count(), 4);
    assert.equal(await page.locator("path.edge").count(), 3);
    await accessible('chain');
    await shot('chain');
    const form = page.getByRole('form', { name: /Complete or fail the step “review”/ });
    await form.getByLabel('Result (JSON, optional)').fill('{"approved": true}');
    await form.getByRole('button', { name: 'Complete' }).click();
    await page.locator('#task-status', { hasText: 'completed' }).waitFor(WAIT);
    await page.locator('g.node[data-step="publish"][data-status="completed"]').waitFor();
    assert.equal((await api('GET', `/tasks/${chain.id}`)).status, 'completed');
  });

  await t.test('the batch lists its failures; retrying them completes it', async () => {
    await page.getByRole('link', { name: 'Batches' }).click();
    await page.getByRole('link', { name: 'Invoices' }).click();
    await page.locator('tr[data-item]').first().waitFor(WAIT);
    assert.deepEqual(await page.locator('tr[data-item]').evaluateAll((rows) => rows.map((r) => r.dataset.item)), ['1', '5']);
    assert.match(await page.locator('tr[data-item="1"]').innerText(), /422/);
    await accessible('batch');
    await shot('batch');
    healed = true;
    await page.getByRole('button', { name: 'Retry failed items' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Retry failed items' }).click();
    await page.locator('#no-failures').waitFor(WAIT);
    await page.locator('#batch-stats').getByText('completed').waitFor(WAIT);
    const done = await api('GET', `/batches/${batch.id}`);
    assert.equal(done.status, 'completed');
    assert.equal(done.successItems, 8);
  });

  await t.test('the upload form makes a batch from a file', async () => {
    await page.getByRole('link', { name: 'Batches', exact: true }).click();
    await page.getByLabel('File', { exact: true }).setInputFiles({
      name: 'orders.jsonl', mimeType: 'application/octet-stream',
      buffer: Buffer.from('{"order": 1}\n{"order": 2}\n{"order": 3}\n'),
    });
    await page.getByLabel('Title (optional)').fill('Orders upload');
    await page.getByLabel('Priority').selectOption('high');
    await page.getByRole('button', { name: 'Upload and start' }).click();
    await page.getByRole('heading', { name: 'Orders upload' }).waitFor();
    await page.locator('#batch-stats').getByText('completed').waitFor(WAIT);
    assert.match(await page.locator('main').innerText(), /3 of 3 items processed/);
  });

  await t.test('the schedules view lists a schedule, which a manager pauses', async () => {
    const schedule = await api('POST', '/schedules', {
      name: 'Reconcile invoices',
      expression: 'cron(0 6 ? * MON-FRI *)',
      timeZone: 'Europe/London',
      template: { title: 'Reconcile invoices', priority: 'critical' },
    });
    await page.getByRole('link', { name: 'Schedules' }).click();
    await page.getByRole('heading', { name: 'Schedules' }).waitFor();
    await page.getByText('cron(0 6 ? * MON-FRI *)').waitFor();
    await accessible('schedules');
    await shot('schedules');
    await page.getByRole('button', { name: 'Pause' }).click();
    await page.getByRole('button', { name: 'Resume' }).waitFor();
    assert.equal((await api('GET', `/schedules/${schedule.id}`)).state, 'paused');
    await api('DELETE', `/schedules/${schedule.id}`);
  });

  await t.test('at 390 px wide the views still fit', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole('link', { name: 'Queues' }).click();
    await page.locator('tr[data-tier="critical"]').waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than the screen`);
    await shot('queues-390');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await t.test('a refused token sends the user back to sign in, with the reason', async () => {
    await page.evaluate(() => sessionStorage.setItem('taskflow.token', 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.bad'));
    await page.getByRole('link', { name: 'Agents' }).click();
    await page.getByText(/You were signed out: missing or invalid bearer token/).waitFor();
    await page.getByLabel('Access token').waitFor();
  });

  await t.test('the assignee starts and completes their task; a member sees no manager actions', async () => {
    await page.getByLabel('Access token').fill(MEMBER_TOKEN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { name: 'Agents' }).waitFor();
    await page.goto(`${CONSOLE_URL}#/tasks/${chore.id}`);
    await page.getByRole('heading', { name: 'File the Q3 report' }).waitFor();
    assert.equal(await page.getByRole('button', { name: 'Cancel task' }).count(), 0);
    await page.getByRole('button', { name: 'Start' }).click();
    await page.locator('#task-status', { hasText: 'in progress' }).waitFor();
    await page.getByLabel('Result (JSON, optional)').fill('{"pages": 12}');
    await page.getByRole('button', { name: 'Complete', exact: true }).click();
    await page.locator('#task-status', { hasText: 'completed' }).waitFor();
    assert.deepEqual((await api('GET', `/tasks/${chore.id}`)).result, { pages: 12 });
  });

  await t.test('sign out forgets the token', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Access token').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('taskflow.token')), null);
  });

  assert.deepEqual(problems, [], 'errors, blocked scripts or outside requests in the browser');
});
