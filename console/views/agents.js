// Agents: capabilities, load against capacity, online or offline.
import { h, fill, table, badge, when, errorBox } from '../dom.js';
import { allPages } from '../api.js';

export async function agentsView(main) {
  fill(main, h('h1', {}, 'Agents'), h('p', { class: 'muted' }, 'Loading…'));
  try {
    const agents = await allPages('/agents', { limit: 100 });
    fill(main, h('h1', {}, 'Agents'),
      agents.length
        ? table('Registered agents', [
          ['Agent', (a) => h('strong', {}, a.id)],
          ['Status', (a) => badge(a.status)],
          ['Capabilities', (a) => (a.capabilities.length ? a.capabilities.join(', ') : '—')],
          ['Load', (a) => h('span', {},
            h('meter', { min: 0, max: a.capacity, high: a.capacity * 0.8, optimum: 0, value: a.activeTasks, 'aria-label': `${a.id} load` }),
            ` ${a.activeTasks} of ${a.capacity}`)],
          ['Last heartbeat', (a) => when(a.lastHeartbeatAt)],
        ], agents)
        : h('p', { class: 'muted' }, 'No agent has registered yet (PUT /api/agents/{id}).'));
  } catch (err) {
    main.append(errorBox(err));
  }
}
