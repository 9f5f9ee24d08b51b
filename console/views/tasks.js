// Tasks: the list with the API's filters (status, priority, type, assignedTo, dueBefore,
// includeArchived) and cursor paging. Filters live in the hash so a view can be linked.
import { h, fill, table, badge, when, errorBox, field, select } from '../dom.js';
import { api } from '../api.js';

export const STATUSES = ['pending', 'assigned', 'queued', 'in_progress', 'completed', 'failed', 'cancelled', 'archived'];
export const PRIORITIES = ['critical', 'high', 'normal', 'low', 'background'];
const TYPES = ['simple', 'multi_step', 'batch'];
const FILTERS = ['status', 'priority', 'type', 'assignedTo', 'dueBefore', 'includeArchived', 'limit'];

export async function tasksView(main, ctx, { title = 'Tasks', fixed = {} } = {}) {
  const params = ctx.params;
  const choose = (name, values) => select(name, [['', 'Any'], ...values.map((v) => [v, v.replace('_', ' ')])], params.get(name) || '');
  const controls = [
    field('Status', choose('status', STATUSES)),
    field('Priority', choose('priority', PRIORITIES)),
    fixed.type ? null : field('Type', choose('type', TYPES)),
    field('Assigned to', h('input', { name: 'assignedTo', value: params.get('assignedTo') || '', size: 14 })),
    field('Due before', h('input', { name: 'dueBefore', type: 'datetime-local', value: localInput(params.get('dueBefore')) })),
    field('Per page', select('limit', [['10', '10'], ['25', '25'], ['50', '50'], ['100', '100']], params.get('limit') || '25')),
    h('div', { class: 'field' }, h('label', {}, h('input', { type: 'checkbox', name: 'includeArchived', checked: params.get('includeArchived') === 'true' }), ' Include archived')),
  ];
  const form = h('form', { class: 'filters card', role: 'search', 'aria-label': `Filter ${title.toLowerCase()}` },
    controls, h('button', { type: 'submit' }, 'Apply'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const name of FILTERS) {
      let value = data.get(name);
      if (name === 'includeArchived') value = value ? 'true' : '';
      if (name === 'dueBefore' && value) value = new Date(value).toISOString();
      if (value) next.set(name, value);
    }
    ctx.go(location.hash.slice(1).split('?')[0], next);
  });
  const list = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('h1', {}, title), form, list);

  const query = { limit: params.get('limit') || '25', ...fixed };
  for (const name of FILTERS) if (params.get(name) && name !== 'limit') query[name] = params.get(name);
  // Cursors of the pages before this one, so "Previous" can go back.
  const cursors = [];
  let cursor = params.get('cursor') || undefined;

  async function load() {
    try {
      const page = await api('/tasks', { query: { ...query, cursor } });
      const rows = page.items;
      const prev = h('button', { type: 'button', class: 'secondary', disabled: cursors.length === 0 }, 'Previous page');
      const next = h('button', { type: 'button', class: 'secondary', disabled: !page.nextCursor }, 'Next page');
      prev.addEventListener('click', () => { cursor = cursors.pop(); load(); });
      next.addEventListener('click', () => { cursors.push(cursor); cursor = page.nextCursor; load(); });
      fill(list,
        rows.length
          ? table(`${title}: page ${cursors.length + 1}`, [
            ['Title', (t) => h('a', { href: `#/tasks/${t.id}` }, t.title)],
            ['Status', (t) => badge(t.status)],
            ['Priority', (t) => t.priority],
            ['Type', (t) => t.type.replace('_', ' ')],
            ['Assigned to', (t) => t.assignedTo || '—'],
            ['Due', (t) => when(t.dueAt)],
            ['Created', (t) => when(t.createdAt)],
          ], rows, (t) => ({ 'data-task': t.id }))
          : h('p', { class: 'muted' }, 'No tasks match these filters.'),
        h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, next,
          h('span', { class: 'muted' }, `Page ${cursors.length + 1}`)));
    } catch (err) {
      fill(list, errorBox(err));
    }
  }
  await load();
}

function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
