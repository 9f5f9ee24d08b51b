// Schedules: each one's expression, time zone, overlap policy, state and next firing; a
// manager pauses and resumes them here (creating and editing is the API's, POST/PUT /api/schedules).
import { h, fill, table, badge, when, notify, errorBox, errorText } from '../dom.js';
import { api } from '../api.js';

export async function schedulesView(main, { user }) {
  const heading = () => h('h1', {}, 'Schedules');
  fill(main, heading(), h('p', { class: 'muted' }, 'Loading…'));
  const manager = user?.role === 'manager';
  const toggle = (s) => {
    const action = s.state === 'paused' ? 'resume' : 'pause';
    return h('button', {
      class: 'secondary',
      type: 'button',
      onclick: async () => {
        try {
          await api(`/schedules/${encodeURIComponent(s.id)}/${action}`, {
            method: 'POST',
            headers: { 'If-Match': `"${s.version}"` },
          });
          notify(`${s.name}: ${action === 'pause' ? 'paused' : 'resumed'}.`);
          await schedulesView(main, { user });
        } catch (err) {
          notify(errorText(err), 'error');
        }
      },
    }, action === 'pause' ? 'Pause' : 'Resume');
  };
  try {
    const { items } = await api('/schedules');
    const columns = [
      ['Schedule', (s) => h('strong', {}, s.name)],
      ['Expression', (s) => h('code', {}, s.expression)],
      ['Time zone', (s) => s.timeZone],
      ['When the last run is open', (s) => s.overlapPolicy.replace('_', ' ')],
      ['State', (s) => badge(s.state)],
      ['Next firing', (s) => (s.state === 'paused' ? '—' : when(s.nextFiring))],
    ];
    if (manager) columns.push(['Action', toggle]);
    fill(main, heading(),
      items.length
        ? table('The agency’s schedules', columns, items)
        : h('p', { class: 'muted' }, 'No schedule yet (POST /api/schedules).'));
  } catch (err) {
    main.append(errorBox(err));
  }
}
