// Batches: the list, an upload form that makes a batch from a file, and a batch's page:
// progress bar, counts, ETA, a paged table of failures with each item's error, "retry
// failed items" and the results download.
import { h, fill, table, badge, when, duration, errorBox, notify, confirmAction, field, select } from '../dom.js';
import { api, ApiError } from '../api.js';
import { PRIORITIES } from './tasks.js';

const REFRESH_MS = 3000;
const FAILURES_PAGE = 20;

export async function batchesView(main, ctx) {
  const list = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('h1', {}, 'Batches'), ctx.user?.role === 'manager' ? uploadForm(ctx) : null, h('h2', {}, 'All batches'), list);
  const cursors = [];
  let cursor;
  async function load() {
    try {
      const page = await api('/batches', { query: { limit: 20, cursor } });
      const prev = h('button', { type: 'button', class: 'secondary', disabled: cursors.length === 0 }, 'Previous page');
      const next = h('button', { type: 'button', class: 'secondary', disabled: !page.nextCursor }, 'Next page');
      prev.addEventListener('click', () => { cursor = cursors.pop(); load(); });
      next.addEventListener('click', () => { cursors.push(cursor); cursor = page.nextCursor; load(); });
      fill(list,
        page.items.length
          ? table('Batches, newest first', [
            ['Title', (b) => h('a', { href: `#/batches/${b.id}` }, b.title)],
            ['Status', (b) => badge(b.status)],
            ['Progress', (b) => h('span', {}, h('progress', { max: 100, value: b.progressPercent, 'aria-label': `${b.title} progress` }), ` ${b.progressPercent}%`)],
            ['Items', (b) => `${b.processedItems} of ${b.totalItems}`, { num: true }],
            ['Failed', (b) => b.failedItems, { num: true }],
            ['Created', (b) => when(b.createdAt)],
          ], page.items, (b) => ({ 'data-batch': b.id }))
          : h('p', { class: 'muted' }, 'No batches yet.'),
        h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, next));
    } catch (err) {
      fill(list, errorBox(err));
    }
  }
  await load();
}

/** File → POST /batches/uploads → PUT to the presigned URL → POST /batches {source}. */
function uploadForm(ctx) {
  const file = h('input', { type: 'file', name: 'file', required: true, accept: '.json,.jsonl,.ndjson,.csv' });
  const title = h('input', { name: 'title', size: 24, maxlength: 200 });
  const priority = select('priority', PRIORITIES.map((p) => [p, p]), 'background');
  const executor = select('executor', [['echo', 'echo (returns each item)'], ['http', 'http (POST each item)'], ['sleep', 'sleep']], 'echo');
  const url = h('input', { name: 'url', type: 'url', size: 28, placeholder: 'https://example.com/hook' });
  const tolerated = h('input', { name: 'tolerated', type: 'number', min: 0, max: 100, step: 'any', value: 0, size: 5 });
  const problem = h('div', { 'aria-live': 'assertive' });
  const submit = h('button', { type: 'submit' }, 'Upload and start');
  const form = h('form', { class: 'card', 'aria-labelledby': 'upload-title' },
    h('h2', { id: 'upload-title' }, 'New batch from a file'),
    h('p', { class: 'muted' }, 'A .json file holds one array, .jsonl one item per line, .csv a header row and one item per row.'),
    h('div', { class: 'filters' }, field('File', file), field('Title (optional)', title), field('Priority', priority),
      field('Run each item with', executor), field('URL for http', url), field('Tolerated failures (%)', tolerated), submit),
    problem);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    fill(problem);
    const chosen = file.files[0];
    if (!chosen) return;
    submit.disabled = true;
    try {
      const upload = await api('/batches/uploads', { method: 'POST', body: { fileName: chosen.name } });
      let put;
      try {
        put = await fetch(upload.upload.url, { method: upload.upload.method, headers: upload.upload.headers, body: chosen });
      } catch (err) {
        throw new ApiError(0, 'upload_failed', `The file could not be uploaded to storage (${err.message}).`);
      }
      if (!put.ok) throw new ApiError(put.status, 'upload_failed', `Storage refused the file (HTTP ${put.status}).`);
      const spec = executor.value === 'http' ? { type: 'http', config: { url: url.value } }
        : executor.value === 'sleep' ? { type: 'sleep', config: { seconds: 1 } } : { type: 'echo' };
      const batch = await api('/batches', {
        method: 'POST',
        body: {
          source: { key: upload.key }, title: title.value.trim() || null, priority: priority.value,
          executor: spec, toleratedFailurePercentage: Number(tolerated.value || 0),
        },
      });
      notify(`Batch “${batch.title}” created.`);
      ctx.go(`/batches/${batch.id}`);
    } catch (err) {
      fill(problem, errorBox(err));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export async function batchView(main, ctx, id) {
  const problem = h('div', { 'aria-live': 'assertive' });
  const summary = h('div', {});
  const failures = h('section', { class: 'card', 'aria-labelledby': 'failures-title' });
  fill(main, h('p', {}, h('a', { href: '#/batches' }, '← Batches')), h('h1', { id: 'batch-title' }, 'Batch'), problem, summary, failures);
  let stopped = false;
  let timer = null;
  let shownRound = null;
  let shownStatus = null;
  const failureCursors = [];
  let failureCursor;

  async function loadFailures() {
    try {
      const page = await api(`/batches/${id}/failures`, { query: { limit: FAILURES_PAGE, cursor: failureCursor } });
      const prev = h('button', { type: 'button', class: 'secondary', disabled: failureCursors.length === 0 }, 'Previous failures');
      const next = h('button', { type: 'button', class: 'secondary', disabled: !page.nextCursor }, 'More failures');
      prev.addEventListener('click', () => { failureCursor = failureCursors.pop(); loadFailures(); });
      next.addEventListener('click', () => { failureCursors.push(failureCursor); failureCursor = page.nextCursor; loadFailures(); });
      fill(failures, h('h2', { id: 'failures-title' }, 'Failed items'),
        page.items.length
          ? table('Each failed item with its error', [
            ['Item', (f) => `#${f.index}`, { num: true }],
            ['Error', (f) => f.error],
          ], page.items, (f) => ({ 'data-item': f.index }))
          : h('p', { class: 'muted', id: 'no-failures' }, 'No failed items.'),
        h('nav', { class: 'pager', 'aria-label': 'Failure pages' }, prev, next));
    } catch (err) {
      fill(failures, h('h2', { id: 'failures-title' }, 'Failed items'), errorBox(err));
    }
  }

  async function refresh() {
    let batch;
    try {
      batch = await api(`/batches/${id}`);
    } catch (err) {
      if (!stopped) fill(problem, errorBox(err));
      return;
    }
    if (stopped) return;
    document.getElementById('batch-title').textContent = batch.title;
    fill(summary, render(batch, ctx, problem, () => { failureCursors.length = 0; failureCursor = undefined; refresh(); }));
    // Failures change only when a round settles or starts.
    if (batch.round !== shownRound || batch.status !== shownStatus) {
      shownRound = batch.round;
      shownStatus = batch.status;
      await loadFailures();
    }
    if (!stopped && ['pending', 'processing'].includes(batch.status)) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function render(batch, ctx, problem, refresh) {
  const manager = ctx.user?.role === 'manager';
  const running = ['pending', 'processing'].includes(batch.status);
  const stats = [
    ['Status', badge(batch.status)],
    ['Items', `${batch.totalItems}`],
    ['Succeeded', `${batch.successItems}`],
    ['Failed', `${batch.failedItems}`],
    ['ETA', batch.etaSeconds === null ? (running ? 'estimating…' : '—') : duration(batch.etaSeconds)],
    ['Round', `${batch.round}`],
  ];
  const retry = h('button', { type: 'button' }, 'Retry failed items');
  retry.addEventListener('click', async () => {
    if (!(await confirmAction(`Run the ${batch.failedItems} failed items of “${batch.title}” again? Their current errors are replaced by the new outcome.`, 'Retry failed items'))) return;
    retry.disabled = true;
    fill(problem);
    try {
      await api(`/batches/${batch.id}/retry-failed`, { method: 'POST', body: {} });
      notify('Retrying the failed items.');
      refresh();
    } catch (err) {
      fill(problem, h('p', { class: 'error', role: 'alert' }, err.message));
      retry.disabled = false;
    }
  });
  return h('section', { class: 'card', 'aria-label': 'Progress' },
    h('p', {}, h('progress', { max: 100, value: batch.progressPercent, 'aria-label': 'Items processed' }),
      ` ${batch.progressPercent}% · ${batch.processedItems} of ${batch.totalItems} items processed`),
    h('div', { class: 'stats', id: 'batch-stats' }, stats.map(([k, v]) => h('div', { class: 'stat' }, h('span', { class: 'muted' }, k), h('b', {}, v)))),
    batch.error ? h('p', { class: 'error' }, batch.error) : null,
    h('dl', { class: 'fields' },
      h('dt', {}, 'Source'), h('dd', {}, batch.source, batch.sourceKey ? ` · ${batch.sourceKey}` : ''),
      h('dt', {}, 'Runs with'), h('dd', {}, batch.executor.type),
      h('dt', {}, 'Priority'), h('dd', {}, batch.priority),
      h('dt', {}, 'Tolerated failures'), h('dd', {}, `${batch.toleratedFailurePercentage} %`),
      h('dt', {}, 'Created'), h('dd', {}, when(batch.createdAt)),
      h('dt', {}, 'Finished'), h('dd', {}, when(batch.completedAt)),
      h('dt', {}, 'Task'), h('dd', {}, h('a', { href: `#/tasks/${batch.taskId}` }, 'The batch task'))),
    h('div', { class: 'actions' },
      batch.resultsUrl ? h('a', { class: 'button secondary', href: batch.resultsUrl, download: '', rel: 'noopener' }, 'Download results') : null,
      manager && !running && batch.failedItems > 0 && batch.status !== 'cancelled' ? retry : null));
}
