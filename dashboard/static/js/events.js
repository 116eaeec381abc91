// Live events: task lifecycle events from every device and presence
// changes, newest first. Only what arrives while the page is open: events
// are not retained.

import { $, h, denied, DENIED } from './dom.js';
import { eventItem } from './devices.js';

/** SHOWN caps the rows drawn; the model keeps FEED_CAP. */
const SHOWN = 200;

export class EventsView {
  constructor(fleet, schedule) {
    this.fleet = fleet;
    this.list = $('event-feed');
    this.search = $('event-search');
    this.drawn = '';
    this.search.addEventListener('input', schedule);
  }

  render() {
    const f = this.fleet;
    const q = this.search.value.trim().toLowerCase();
    const key = f.v.feed + '/' + f.v.access + '/' + q;
    if (key === this.drawn) return;
    this.drawn = key;
    const items = q
      ? f.feed.filter((e) => [e.device, e.job, e.task, e.type, e.message].some((s) => s && s.toLowerCase().includes(q)))
      : f.feed;
    $('event-shown').textContent = `${Math.min(items.length, SHOWN)} of ${f.feed.length} events since this page was opened`;
    if (items.length === 0) {
      this.list.replaceChildren(!f.feed.length && f.deniedKind('events') ? h('li', { class: 'empty' }, denied('events', `Device events are ${DENIED}.`))
        : h('li', { class: 'muted empty' }, f.feed.length ? 'No event matches the filter.' : 'Waiting for events…'));
      return;
    }
    this.list.replaceChildren(...items.slice(0, SHOWN).map((e) => eventItem(e, true)));
  }
}
