// Queues: per tier backlog, in flight, oldest wait against the SLA, dead letters and
// breaches in the last hour, refreshed every few seconds. A breach turns the row red.
import { h, fill, table, duration, errorBox } from '../dom.js';
import { api } from '../api.js';

const REFRESH_MS = 5000;

export async function queuesView(main) {
  const status = h('p', { class: 'live', 'aria-live': 'off' }, 'Loading…');
  const body = h('div', {});
  fill(main, h('h1', {}, 'Queues'), status, body);
  let timer = null;
  let stopped = false;

  async function refresh() {
    try {
      const overview = await api('/queues');
      if (stopped) return;
      fill(body, render(overview));
      status.textContent = `${overview.scope === 'system' ? 'Whole deployment' : `Agency ${overview.agencyId}`} · updated ${new Date(overview.generatedAt).toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    } catch (err) {
      if (stopped) return;
      fill(body, errorBox(err));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function breached(tier) {
  return tier.breachesLastHour > 0 || (tier.slaSeconds !== null && tier.oldestWaitingSeconds > tier.slaSeconds);
}

function waitCell(tier) {
  const wait = duration(tier.oldestWaitingSeconds);
  if (tier.slaSeconds === null) return h('span', {}, wait, h('span', { class: 'muted' }, ' · best effort'));
  const over = tier.oldestWaitingSeconds > tier.slaSeconds;
  return h('span', {},
    h('meter', { min: 0, max: tier.slaSeconds, low: tier.slaSeconds * 0.5, high: tier.slaSeconds * 0.8, optimum: 0,
      value: Math.min(tier.oldestWaitingSeconds, tier.slaSeconds), 'aria-label': `${tier.tier} oldest wait against its SLA` }),
    ' ', wait, ' of ', duration(tier.slaSeconds), over ? h('strong', { class: 'badge breach-flag' }, 'over SLA') : null);
}

function render(overview) {
  const system = overview.scope === 'system';
  const anyBreach = overview.tiers.some(breached);
  return [
    anyBreach
      ? h('p', { class: 'error', role: 'alert' }, 'SLA breached: ', overview.tiers.filter(breached).map((t) => t.tier).join(', '))
      : h('p', { class: 'ok' }, 'Every tier is within its SLA.'),
    table('Work per priority tier', [
      ['Tier', (t) => h('strong', {}, t.tier)],
      ['Backlog', (t) => t.backlog, { num: true }],
      ['In flight', (t) => t.inFlight, { num: true }],
      ['Oldest wait vs SLA', waitCell],
      ['Dead letters', (t) => (system ? t.deadLetters ?? 0 : h('span', { class: 'muted', title: 'Operators only: a queue is shared by every agency' }, '—')), { num: true }],
      ['Breaches (1 h)', (t) => (t.breachesLastHour > 0 ? h('strong', { class: 'badge breach-flag' }, `${t.breachesLastHour} breached`) : '0'), { num: true }],
    ], overview.tiers, (t) => ({ class: breached(t) ? 'breach' : null, 'data-tier': t.tier })),
    overview.tiers.some((t) => t.exact === false)
      ? h('p', { class: 'muted' }, 'Some counts are lower bounds: a bounded page did not hold everything.')
      : null,
  ];
}
