// Chains: the multi_step tasks, and on a chain's page its steps drawn as a graph by
// dependency (inline SVG, coloured by status) with each step's timings, result or
// error. A waiting manual step can be completed here by its assignee or a manager.
import { h, s, fill, badge, when, between, json, errorBox, notify, table } from '../dom.js';
import { api } from '../api.js';
import { tasksView } from './tasks.js';
import { completeForm } from './task.js';

const COLORS = {
  pending: '#5b6475', running: '#1d4ed8', waiting: '#8a5300',
  completed: '#176b32', failed: '#b3261e', skipped: '#5b6475',
};
const REFRESH_MS = 3000;

export function chainsView(main, ctx) {
  return tasksView(main, ctx, { title: 'Chains', fixed: { type: 'multi_step' } });
}

/** Appends the chain's graph and steps to the task page; refreshes while it runs. */
export async function chainSection(main, ctx, task) {
  const section = h('section', { class: 'card', 'aria-labelledby': 'chain-title' });
  main.append(section);
  let stopped = false;
  let timer = null;
  async function refresh() {
    let view;
    try {
      // The first page carries the chain's status and progress; the rest only steps.
      view = await api(`/tasks/${task.id}/steps`);
      const steps = [...view.steps];
      for (let cursor = view.nextCursor; cursor && steps.length < 1000;) {
        const page = await api(`/tasks/${task.id}/steps`, { query: { cursor } });
        steps.push(...page.steps);
        cursor = page.nextCursor;
      }
      if (stopped) return;
      fill(section, render(task, steps, view, ctx));
    } catch (err) {
      if (stopped) return;
      fill(section, h('h2', { id: 'chain-title' }, 'Steps'), errorBox(err));
    }
    const running = view && ['in_progress', 'queued', 'pending', 'assigned'].includes(view.status);
    // A chain that finished in the meantime: show the task's new status too.
    if (view && view.status !== task.status) {
      window.dispatchEvent(new Event('taskflow:refresh'));
      return;
    }
    if (!stopped && running) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function render(task, steps, view, ctx) {
  const progress = view?.progress;
  return [
    h('h2', { id: 'chain-title' }, 'Steps'),
    progress ? h('p', {}, h('progress', { max: 100, value: progress.percent, 'aria-label': 'Steps finished' }),
      ` ${progress.percent}% finished · ${progress.completed} completed, ${progress.running} running, ${progress.waiting} waiting, ${progress.failed} failed, ${progress.skipped} skipped, ${progress.pending} pending`) : null,
    graph(steps),
    legend(),
    table('Every step, in order', [
      ['Step', (st) => h('strong', {}, st.name)],
      ['Status', (st) => badge(st.status)],
      ['Depends on', (st) => (st.dependsOn.length ? st.dependsOn.join(', ') : '—')],
      ['Runs', (st) => st.config?.executor?.type || 'echo'],
      ['Started', (st) => when(st.startedAt)],
      ['Took', (st) => (st.startedAt ? between(st.startedAt, st.completedAt) : '—')],
      ['Result or error', (st) => (st.error ? h('span', { class: 'error' }, st.error) : st.result !== undefined ? json(st.result) : '—')],
    ], steps, (st) => ({ 'data-step': st.name, 'data-status': st.status })),
    steps.filter((st) => st.status === 'waiting').map((st) => waitingStep(task, st, ctx)),
  ];
}

function waitingStep(task, step, ctx) {
  const user = ctx.user || {};
  const assignee = step.config?.assignedTo || step.config?.assignee;
  const allowed = user.role === 'manager' || (assignee && assignee === user.id);
  const problem = h('div', { 'aria-live': 'assertive' });
  return h('section', { class: 'card', 'aria-label': `Manual step ${step.name}` },
    h('h3', {}, `“${step.name}” is waiting${assignee ? ` for ${assignee}` : ''}`),
    problem,
    allowed
      ? completeForm(task, ctx, problem, { path: `/tasks/${task.id}/steps/${encodeURIComponent(step.name)}/complete`, label: `step “${step.name}”` })
      : h('p', { class: 'muted' }, 'Only its assignee or a manager can complete it.'));
}

function legend() {
  return h('p', { class: 'legend' }, Object.keys(COLORS).map((status) => badge(status)));
}

/** Steps in columns by depth (longest chain of dependencies before them). */
function graph(steps) {
  if (!steps.length) return h('p', { class: 'muted' }, 'No steps.');
  const byName = new Map(steps.map((st) => [st.name, st]));
  const depth = new Map();
  const depthOf = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    if (seen.has(name)) return 0;
    seen.add(name);
    const st = byName.get(name);
    const d = st && st.dependsOn.length ? 1 + Math.max(...st.dependsOn.map((dep) => depthOf(dep, seen))) : 0;
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const st of steps) {
    const d = depthOf(st.name);
    (columns[d] ||= []).push(st);
  }
  const W = 170; const H = 50; const GAP_X = 60; const GAP_Y = 20; const PAD = 16;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((st, r) => pos.set(st.name, { x: PAD + c * (W + GAP_X), y: PAD + r * (H + GAP_Y) })));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X;
  const height = PAD * 2 + Math.max(...columns.map((col) => col.length)) * (H + GAP_Y) - GAP_Y;
  const edges = [];
  for (const st of steps) {
    const to = pos.get(st.name);
    for (const dep of st.dependsOn) {
      const from = pos.get(dep);
      if (!from) continue;
      const x1 = from.x + W; const y1 = from.y + H / 2; const x2 = to.x; const y2 = to.y + H / 2;
      edges.push(s('path', { class: 'edge', d: `M${x1},${y1} C${x1 + GAP_X / 2},${y1} ${x2 - GAP_X / 2},${y2} ${x2 - 6},${y2}`, 'marker-end': 'url(#arrow)' }));
    }
  }
  const nodes = steps.map((st) => {
    const { x, y } = pos.get(st.name);
    const color = COLORS[st.status] || '#5b6475';
    const label = st.name.length > 20 ? `${st.name.slice(0, 19)}…` : st.name;
    return s('g', { class: 'node', 'data-step': st.name, 'data-status': st.status },
      s('title', {}, `${st.name}: ${st.status}`),
      s('rect', { x, y, width: W, height: H, rx: 8, stroke: color }),
      s('text', { x: x + 10, y: y + 20 }, label),
      s('text', { x: x + 10, y: y + 38, class: `st-${st.status}` }, st.status));
  });
  return h('div', { class: 'graph' },
    s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': 'graph-title' },
      s('title', { id: 'graph-title' }, `Steps by dependency: ${steps.map((st) => `${st.name} ${st.status}`).join(', ')}`),
      s('defs', {}, s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto' },
        s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#8a93a5' }))),
      edges, nodes));
}
