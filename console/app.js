// The console's shell: sign-in, navigation and the hash router (#/tasks/ID). Views
// live in views/*.js; each renders into <main> and may return a function that stops
// its timers when the user leaves.
import { h, fill, notify, errorBox } from './dom.js';
import * as auth from './auth.js';
import { queuesView } from './views/queues.js';
import { tasksView } from './views/tasks.js';
import { taskView } from './views/task.js';
import { chainsView } from './views/chain.js';
import { batchesView, batchView } from './views/batches.js';
import { agentsView } from './views/agents.js';
import { schedulesView } from './views/schedules.js';

const main = document.getElementById('main');
let leaveView = null;

const ROUTES = [
  [/^\/queues$/, () => queuesView],
  [/^\/tasks$/, () => tasksView],
  [/^\/tasks\/([0-9A-Za-z]+)$/, (id) => (el, ctx) => taskView(el, ctx, id)],
  [/^\/chains$/, () => chainsView],
  [/^\/batches$/, () => batchesView],
  [/^\/batches\/([0-9A-Za-z]+)$/, (id) => (el, ctx) => batchView(el, ctx, id)],
  [/^\/agents$/, () => agentsView],
  [/^\/schedules$/, () => schedulesView],
];

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/queues';
  const [path, search = ''] = raw.split('?');
  return { path, params: new URLSearchParams(search) };
}

/** Moves to another view (with query parameters kept in the hash, never a token). */
export function go(path, params) {
  const query = params && [...params].length ? `?${params}` : '';
  location.hash = `#${path}${query}`;
}

// Each render draws into a root of its own: a view still loading when the user moves on keeps
// writing into its detached root, never over the view that replaced it.
let renders = 0;

async function render() {
  const current = ++renders;
  if (leaveView) { leaveView(); leaveView = null; }
  if (!auth.token()) return showSignIn();
  showChrome();
  const { path, params } = parseHash();
  for (const a of document.querySelectorAll('#nav a')) {
    const section = a.getAttribute('href').slice(1);
    if (path === section || path.startsWith(`${section}/`)) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const match = ROUTES.map(([re, make]) => [path.match(re), make]).find(([m]) => m);
  fill(main);
  if (!match) {
    fill(main, h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. ', h('a', { href: '#/queues' }, 'Go to the queues.')));
    return;
  }
  const [m, make] = match;
  const view = make(...m.slice(1));
  const root = h('div', { class: 'view' });
  fill(main, root);
  try {
    const stop = await view(root, { params, user: auth.user(), go });
    if (current !== renders) {
      if (typeof stop === 'function') stop();
      return;
    }
    leaveView = typeof stop === 'function' ? stop : null;
  } catch (err) {
    // A 401 has already sent the user back to the sign-in page, which says why.
    if (current === renders && err.status !== 401) root.append(errorBox(err));
  }
}

function showChrome() {
  const u = auth.user();
  document.getElementById('nav').hidden = false;
  document.getElementById('who').hidden = false;
  document.getElementById('who-name').textContent = u ? `${u.name} · ${u.role} · ${u.agency}` : '';
}

function showSignIn() {
  document.getElementById('nav').hidden = true;
  document.getElementById('who').hidden = true;
  const message = auth.takeSignInMessage();
  const heading = h('h1', {}, 'Sign in to Taskflow');
  if (auth.authMode() === 'cognito') {
    fill(main, h('section', { class: 'signin card' }, heading,
      message && h('p', { class: 'error', role: 'alert' }, message),
      h('p', {}, 'You sign in with your organisation account on the Taskflow sign-in page.'),
      h('button', { type: 'button', onclick: () => auth.startHostedSignIn() }, 'Sign in')));
    return;
  }
  const input = h('textarea', { id: 'token', name: 'token', required: true, autocomplete: 'off', spellcheck: 'false',
    'aria-describedby': 'token-help' });
  const problem = h('p', { class: 'error', role: 'alert', hidden: !message }, message || '');
  const form = h('form', { class: 'signin card', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in to Taskflow'),
    problem,
    h('label', { for: 'token' }, 'Access token'),
    input,
    h('p', { id: 'token-help', class: 'muted' },
      'Paste a token from ', h('code', {}, 'make token AGENCY=acme USER=alice ROLE=manager'),
      '. It is kept in this browser tab only and forgotten when you sign out or close the tab.'),
    h('button', { type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const error = auth.signInWithToken(input.value);
    if (error) {
      problem.textContent = error;
      problem.hidden = false;
      input.focus();
      return;
    }
    notify('');
    render();
  });
  fill(main, form);
  input.focus();
}

async function start() {
  await auth.loadConfig();
  if (location.pathname.endsWith('/callback')) {
    const error = await auth.finishHostedSignIn();
    if (error) auth.signOut(error);
  }
  document.getElementById('sign-out').addEventListener('click', () => auth.signOut());
  window.addEventListener('taskflow:signed-out', () => { notify(''); render(); });
  window.addEventListener('taskflow:refresh', () => render());
  window.addEventListener('hashchange', () => { notify(''); render().then(() => main.focus({ preventScroll: true })); });
  render();
}

start();
