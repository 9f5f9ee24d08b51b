// Task detail: fields, status, timings, attachments and the actions the caller's role
// allows. Managers assign, auto-assign, cancel, retry and archive; the assignee starts,
// completes and fails. The API decides; a refusal is shown in its own words.
import { h, fill, badge, when, between, json, errorBox, notify, confirmAction, field, table } from '../dom.js';
import { api } from '../api.js';
import { chainSection } from './chain.js';

const OPEN = ['pending', 'assigned', 'queued', 'in_progress'];

export async function taskView(main, ctx, id) {
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  const task = await api(`/tasks/${id}`);
  const problem = h('div', { 'aria-live': 'assertive' });
  const status = h('span', { id: 'task-status' }, badge(task.status));
  fill(main,
    h('p', {}, h('a', { href: task.type === 'multi_step' ? '#/chains' : '#/tasks' }, task.type === 'multi_step' ? '← Chains' : '← Tasks')),
    h('h1', {}, task.title),
    h('p', {}, 'Status: ', status, ' ', h('span', { class: 'muted' }, `version ${task.version}`)),
    problem,
    actions(task, ctx, problem),
    h('section', { class: 'card', 'aria-labelledby': 'fields-title' }, h('h2', { id: 'fields-title' }, 'Details'), fields(task)),
    task.result !== undefined ? h('section', { class: 'card' }, h('h2', {}, 'Result'), json(task.result)) : null,
    task.error ? h('section', { class: 'card' }, h('h2', {}, 'Error'), h('p', { class: 'error' }, task.error)) : null,
    attachments(task, problem));
  if (task.type === 'multi_step') return chainSection(main, ctx, task);
  return undefined;
}

function fields(task) {
  const rows = [
    ['ID', h('code', {}, task.id)],
    ['Type', task.type.replace('_', ' ')],
    ['Priority', task.priority],
    ['Assigned to', task.assignedTo || '—'],
    ['Created by', task.createdBy],
    ['Created', when(task.createdAt)],
    ['Due', when(task.dueAt)],
    ['Started', when(task.startedAt)],
    ['Finished', when(task.completedAt)],
    ['Run time', task.startedAt ? between(task.startedAt, task.completedAt) : '—'],
    ['Attempts', String(task.attempts)],
    task.executor ? ['Executor', `${task.executor.type}`] : null,
    task.description ? ['Description', task.description] : null,
    Object.keys(task.metadata || {}).length ? ['Metadata', json(task.metadata)] : null,
    task.input !== undefined ? ['Input', json(task.input)] : null,
    task.type === 'batch' ? ['Batch', h('a', { href: `#/batches/${task.id}` }, 'Progress, failures and results')] : null,
  ].filter(Boolean);
  return h('dl', { class: 'fields' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function attachments(task, problem) {
  if (!task.attachments?.length) return null;
  return h('section', { class: 'card' }, h('h2', {}, 'Attachments'),
    table('Files attached to this task', [
      ['File', (a) => a.fileName],
      ['Type', (a) => a.contentType],
      ['Uploaded by', (a) => a.uploadedBy],
      ['Added', (a) => when(a.createdAt)],
      ['Download', (a) => downloadButton(task, a, problem)],
    ], task.attachments));
}

/** Asks the API for a short-lived URL, then lets the browser fetch the file (it is sent as
 * an attachment, so the page stays where it is). */
function downloadButton(task, attachment, problem) {
  const button = h('button', { type: 'button', class: 'secondary' }, `Download ${attachment.fileName}`);
  button.addEventListener('click', async () => {
    fill(problem);
    try {
      const reply = await api(`/tasks/${task.id}/attachments/${encodeURIComponent(attachment.id)}`);
      location.assign(reply.download.url);
    } catch (err) {
      fill(problem, errorBox(err));
    }
  });
  return button;
}

/** Runs an API action, then shows the task again (or the error in words). */
function action(label, ctx, problem, run, { confirm, className } = {}) {
  const button = h('button', { type: 'button', class: className });
  button.textContent = label;
  button.addEventListener('click', async () => {
    if (confirm && !(await confirmAction(confirm, label))) return;
    button.disabled = true;
    fill(problem);
    try {
      await run();
      notify(`${label}: done.`);
      rerender();
    } catch (err) {
      fill(problem, errorBox(err));
      button.disabled = false;
    }
  });
  return button;
}

/** Shows the current view again, with fresh data. */
export function rerender() {
  window.dispatchEvent(new Event('taskflow:refresh'));
}

function actions(task, ctx, problem) {
  const user = ctx.user || {};
  const manager = user.role === 'manager';
  const assignee = task.assignedTo && task.assignedTo === user.id;
  const open = OPEN.includes(task.status);
  const path = `/tasks/${task.id}`;
  const groups = [];

  if (manager && open && task.type === 'simple' && !task.executor) {
    const who = h('input', { name: 'assignedTo', required: true, size: 16, autocomplete: 'off' });
    const form = h('form', { 'aria-label': 'Assign' }, field('Assign to (user id)', who), h('button', { type: 'submit' }, 'Assign'));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      fill(problem);
      try {
        await api(`${path}/assign`, { method: 'POST', body: { assignedTo: who.value.trim() } });
        notify('Assigned.');
        rerender();
      } catch (err) {
        fill(problem, errorBox(err));
      }
    });
    groups.push(form, action('Auto-assign', ctx, problem, () => api(`${path}/assign`, { method: 'POST', body: { auto: true } }), { className: 'secondary' }));
  }
  if (manager && open) {
    groups.push(action('Cancel task', ctx, problem, () => api(`${path}/cancel`, { method: 'POST' }),
      { confirm: `Cancel “${task.title}”? A cancelled task cannot be reopened.`, className: 'danger' }));
  }
  if (manager && task.status === 'failed') {
    groups.push(action('Retry', ctx, problem, () => api(`${path}/retry`, { method: 'POST' }),
      { confirm: `Run “${task.title}” again from attempt 1? Its error is replaced.` }));
  }
  if (manager && task.status !== 'archived') {
    groups.push(action('Archive', ctx, problem, () => api(path, { method: 'DELETE' }),
      { confirm: `Archive “${task.title}”? It leaves the task list and cannot be changed afterwards.`, className: 'secondary' }));
  }
  if (assignee && task.status === 'assigned') {
    groups.push(action('Start', ctx, problem, () => api(`${path}/start`, { method: 'POST' })));
  }
  if (assignee && task.status === 'in_progress' && task.type === 'simple') {
    groups.push(completeForm(task, ctx, problem));
  }
  if (!groups.length) return null;
  return h('section', { class: 'card', 'aria-labelledby': 'actions-title' }, h('h2', { id: 'actions-title' }, 'Actions'),
    h('div', { class: 'actions' }, groups));
}

/** Complete with a JSON result, or fail with an error text. */
export function completeForm(task, ctx, problem, { path = `/tasks/${task.id}/complete`, label = 'task' } = {}) {
  const result = h('textarea', { name: 'result', rows: 3, placeholder: '{"done": true}' });
  const error = h('input', { name: 'error', size: 30 });
  const form = h('form', { class: 'card', 'aria-label': `Complete or fail the ${label}` },
    field('Result (JSON, optional)', result),
    h('div', { class: 'actions' }, h('button', { type: 'submit', value: 'complete' }, 'Complete')),
    field('Or fail it with this error', error),
    h('div', { class: 'actions' }, h('button', { type: 'submit', value: 'fail', class: 'danger' }, 'Fail')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    fill(problem);
    const failing = event.submitter?.value === 'fail';
    let body;
    if (failing) {
      if (!error.value.trim()) { fill(problem, errorBox(new Error('Say why it failed: the error is required.'))); error.focus(); return; }
      if (!(await confirmAction(`Fail the ${label}? This cannot be undone.`, 'Fail'))) return;
      body = { error: error.value.trim() };
    } else {
      try {
        body = { result: result.value.trim() ? JSON.parse(result.value) : {} };
      } catch (err) {
        fill(problem, errorBox(new Error(`The result is not valid JSON: ${err.message}`)));
        result.focus();
        return;
      }
    }
    try {
      await api(path, { method: 'POST', body });
      notify(failing ? 'Marked failed.' : 'Completed.');
      rerender();
    } catch (err) {
      fill(problem, errorBox(err));
    }
  });
  return form;
}
