// Building DOM from data. Tenant data only ever becomes text nodes or attribute
// values (never HTML), so a task titled `<img src=x onerror=alert(1)>` shows as text.

/** h('a', {href: '#/x', class: 'y'}, 'text', child) */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** The same for SVG elements. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces everything inside `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function badge(status) {
  const word = String(status ?? 'unknown');
  return h('span', { class: `badge s-${word.replace(/[^a-z_]/g, '')}` }, word.replace('_', ' '));
}

export function when(iso) {
  if (!iso) return '—';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return h('time', { datetime: iso, title: iso }, date.toLocaleString());
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const part = (n, unit) => (n ? ` ${n} ${unit}` : '');
  if (s < 3600) return `${Math.floor(s / 60)} min${part(s % 60, 's')}`;
  return `${Math.floor(s / 3600)} h${part(Math.floor((s % 3600) / 60), 'min')}`;
}

export function between(fromIso, toIso) {
  if (!fromIso) return '—';
  const end = toIso ? new Date(toIso) : new Date();
  return duration((end - new Date(fromIso)) / 1000);
}

export function json(value) {
  return h('pre', {}, JSON.stringify(value, null, 2));
}

/** A table; `columns` are [header, cell(row) → node|text, {num}]. */
export function table(caption, columns, rows, rowAttrs = () => ({})) {
  return h('div', { class: 'scroll' },
    h('table', { class: 'stack' },
      h('caption', { class: 'muted' }, caption),
      h('thead', {}, h('tr', {}, columns.map(([title, , opts]) =>
        h('th', { scope: 'col', class: opts?.num ? 'num' : null }, title)))),
      h('tbody', {}, rows.map((row) => h('tr', rowAttrs(row), columns.map(([title, cell, opts]) =>
        h('td', { 'data-label': title, class: opts?.num ? 'num' : null }, cell(row))))))));
}

/** Asks before something that cannot be undone; resolves true when confirmed. */
export function confirmAction(text, confirmLabel = 'Confirm') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = confirmLabel;
  dialog.returnValue = '';
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
  });
}

/** Shows a message in the page's live region (read out by screen readers). */
export function notify(message, kind = 'ok') {
  const notice = document.getElementById('notice');
  fill(notice, message ? h('p', { class: kind === 'error' ? 'error' : 'ok' }, message) : null);
}

/** An API error (or any other) as a sentence, with the fields it names. */
export function errorText(err) {
  if (err?.fields && Object.keys(err.fields).length) {
    const details = Object.entries(err.fields).map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`);
    return `${err.message} (${details.join('; ')})`;
  }
  return err?.message || String(err);
}

export function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, errorText(err));
}

/** A labelled control: field('Status', select(...)) with a generated id. */
let nextId = 0;
export function field(label, control) {
  const id = control.id || `f${++nextId}`;
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

export function select(name, options, value) {
  return h('select', { name },
    options.map(([v, text]) => h('option', { value: v, selected: v === value }, text)));
}
