// Small DOM helpers. Text always goes in as text (textContent), never as
// HTML: labels, messages and names come from the network.

/**
 * h creates an element. attrs: "class", "text", "dataset" (object), "on…"
 * (listeners), anything else as an attribute (true → empty, null/false → none).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** $ finds the element with the given data-testid. */
export function $(testid, root = document) {
  return root.querySelector(`[data-testid="${testid}"]`);
}

/** badge is a coloured state word; the colour comes from the state's class. */
export function badge(state, testid) {
  return h('span', { class: 'badge s-' + (state || 'none'), 'data-testid': testid, dataset: { state: state || '' } }, state || '—');
}

/** time renders an instant as "3m ago", with the exact time on hover. */
export function timeEl(iso, now = Date.now()) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const t = Date.parse(iso);
  if (Number.isNaN(t) || t <= 0) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: iso, title: new Date(t).toLocaleString() }, ago(t, now));
}

/** ago says how long ago t (ms) was, coarsely. */
export function ago(t, now = Date.now()) {
  const s = Math.round((now - t) / 1000);
  if (s < -5) return 'in ' + span(-s);
  if (s < 5) return 'just now';
  return span(s) + ' ago';
}

function span(s) {
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + (Math.floor(s / 60) % 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + (Math.floor(s / 3600) % 24) + 'h';
}

/** clock is a time of day, for event lists. */
export function clock(iso) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '';
  const d = new Date(t);
  return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
}

/** table builds a simple table from a header row and rows of cells. */
export function table(head, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', null, h('tr', null, head.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', null, rows));
}

/** mb formats megabytes. */
export function mb(n) {
  if (!n) return '—';
  return n >= 10240 ? (n / 1024).toFixed(1) + ' GB' : n + ' MB';
}

/** deviceLink is a link to a device's details. */
export function deviceLink(id) {
  return h('a', { href: '#devices/' + encodeURIComponent(id), class: 'dev-link' }, id);
}

/** jobLink is a link to a job in the jobs view. */
export function jobLink(id) {
  return h('a', { href: '#jobs/' + encodeURIComponent(id), class: 'job-link' }, id);
}

/** plural says "1 device", "2 devices". */
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

/** DENIED is what the page says where the broker refused a subscription. */
export const DENIED = 'not permitted for this token';

/**
 * denied is the note shown instead of a section whose topics the broker
 * refused to this page's token (a viewer may read status topics only).
 * @param {string} what the section, e.g. "desired"; also data-what
 * @param {string} text the sentence, starting with what is not permitted
 */
export function denied(what, text) {
  return h('p', { class: 'denied', 'data-testid': 'denied', dataset: { what }, title: `The broker refused this page's subscription: ${DENIED}.` }, text);
}
