// Entry point: read /config.json, connect to the broker, sign in when it
// asks for a token, route between the views, and draw at most once per
// animation frame however many messages arrive (10,000 devices send 30,000
// retained messages on connect).
//
// Signing in: the page connects anonymously (tether dev lets loopback
// pages in), or with the token kept from an earlier sign-in. When the
// broker refuses (CONNACK not authorized / bad username or password) it
// shows the form; a kept token that is refused is forgotten and the page
// tries anonymously once more before asking.

import { $, clock } from './dom.js';
import { Fleet } from './model.js';
import { Link, brokerURL, tlsHint, RECONNECT_MS } from './conn.js';
import { TokenStore, parseToken, credentials } from './auth.js';
import { Login } from './login.js';
import { OverviewView } from './overview.js';
import { DevicesView } from './devices.js';
import { JobsView } from './jobs.js';
import { EventsView } from './events.js';

const VIEWS = ['overview', 'devices', 'jobs', 'events'];

async function main() {
  let cfg;
  try {
    const res = await fetch('config.json', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    cfg = await res.json();
  } catch (err) {
    showLink({ state: 'failed', error: 'cannot read config.json: ' + err.message });
    return;
  }
  const root = cfg.topic_root || 'tether';
  $('topic-root').textContent = root + '/v1';

  const fleet = new Fleet(root);
  let frameAsked = false;
  const schedule = () => {
    if (frameAsked) return;
    frameAsked = true;
    requestAnimationFrame(frame);
  };

  const link = cfg.ws_port ? new Link({
    url: brokerURL(location, cfg.ws_port, cfg.ws_tls === true),
    base: fleet.base,
    filters: fleet.filters(),
    gaps: () => fleet.gaps(),
    onMessage: (topic, payload, retained) => {
      fleet.apply(topic, payload, retained);
      schedule();
    },
    onState: (s) => {
      showLink(s);
      signIn(s);
      schedule();
    },
    onAccess: (filter, granted) => {
      fleet.setAccess(filter, granted);
      schedule();
    },
  }) : null;

  // who is what the link was last started with. token: "<id>.<secret>" or
  // "" for anonymous; source: "anonymous", "form" (typed, not yet
  // accepted) or "kept" (accepted, or kept from an earlier visit).
  let who = { token: '', id: '', source: 'anonymous', remember: false };
  let forgotten = ''; // id of a kept token the broker refused
  const store = new TokenStore(storage('sessionStorage'), storage('localStorage'));
  const login = new Login({
    onSubmit: (text, remember) => {
      let tok;
      try {
        tok = parseToken(text);
      } catch (err) {
        login.error(err.message);
        return;
      }
      login.error('');
      login.busy(`Signing in with token ${tok.id}…`);
      connect({ token: tok.id + '.' + tok.secret, id: tok.id, source: 'form', remember });
    },
    onSignOut: () => {
      store.clear();
      link?.stop();
      // A fresh page: nothing of what this token could read stays on screen.
      location.reload();
    },
  });

  function connect(next) {
    who = next;
    link.start(next.token ? credentials(parseToken(next.token)) : null);
  }

  /** signIn follows the link for the sign-in form and the signed-in control. */
  function signIn(s) {
    if (s.state === 'refused') {
      const why = s.refusal || 'refused';
      if (who.source === 'kept') {
        // Revoked, or another broker on this address (tether dev after
        // tether server): forget it, and see whether we need one at all.
        store.clear();
        forgotten = who.id;
        login.signedIn('', false);
        setTimeout(() => connect({ token: '', id: '', source: 'anonymous', remember: false }));
      } else if (who.source === 'form') {
        login.error(`The broker refused token ${who.id} (${why}). Check that you pasted all of it; ` +
          'the operator who gave it to you can tell whether it is still valid.');
      } else {
        login.show(forgotten
          ? `The broker no longer accepts the token ${forgotten} this browser kept (${why}). Sign in with a token.`
          : `This broker lets dashboards in with a token only: it refused this page without one (${why}). Paste the token you were given.`);
      }
      return;
    }
    if (who.source === 'form') {
      if (s.state === 'connected') {
        store.save(who.token, who.remember);
        who = { ...who, source: 'kept' };
        login.hide();
        login.signedIn(who.id, who.remember);
      } else if (s.state === 'connecting' && (s.error || s.retries > 0)) {
        login.busy(`Signing in with token ${who.id}: cannot reach the broker at ${s.url}${s.error ? ` (${s.error})` : ''}; retrying every ${RECONNECT_MS / 1000} s.`);
      }
    }
  }

  let watched = ''; // the device whose desired state we subscribe to
  const views = {
    overview: new OverviewView(fleet),
    devices: new DevicesView(fleet, (id) => {
      if (watched) fleet.forgetDesired(watched);
      watched = id;
      link?.watchDesired(id ? fleet.desiredTopic(id) : '');
      schedule();
    }, schedule),
    jobs: new JobsView(fleet, schedule),
    events: new EventsView(fleet, schedule),
  };

  let current = '';
  function route() {
    const [name, ...rest] = location.hash.replace(/^#/, '').split('/');
    const view = VIEWS.includes(name) ? name : 'overview';
    const arg = decodeURIComponent(rest.join('/'));
    if (view !== current) {
      for (const v of VIEWS) {
        document.getElementById('view-' + v).hidden = v !== view;
        const tab = $('tab-' + v);
        if (v === view) tab.setAttribute('aria-current', 'page');
        else tab.removeAttribute('aria-current');
      }
      current = view;
      document.title = `Tether · ${view}`;
    }
    views.devices.select(view === 'devices' ? arg : '');
    if (view === 'jobs') views.jobs.select(arg);
    schedule();
  }

  function frame() {
    frameAsked = false;
    const now = Date.now();
    $('tab-devices-count').textContent = fleet.devices.size || '';
    $('tab-jobs-count').textContent = fleet.jobs.size || '';
    views[current].render(now);
    footer(now);
  }

  let footAt = 0;
  let footKey = '';
  function footer(now) {
    const key = `${fleet.messages}/${fleet.malformed}/${link?.stats.repairedTopics}`;
    if (key === footKey) return;
    // toLocaleTimeString is slow enough to matter at 30,000 messages.
    if (now - footAt < 250) {
      schedule();
      return;
    }
    footAt = now;
    footKey = key;
    const foot = [`${fleet.messages} messages`];
    if (fleet.lastMessageAt) foot.push('last at ' + clock(new Date(fleet.lastMessageAt).toISOString()));
    if (link?.stats.repairedTopics) foot.push(`asked again for ${link.stats.repairedTopics} retained topics that did not arrive`);
    if (fleet.malformed) foot.push(`${fleet.malformed} malformed ignored (last on ${fleet.lastMalformed})`);
    foot.push('broker ' + (link ? link.url : '—'));
    $('footer').textContent = foot.join(' · ');
  }

  window.addEventListener('hashchange', route);
  route();
  // Relative times ("3m ago") age without messages.
  setInterval(schedule, 5000);

  if (!link) {
    showLink({ state: 'failed', error: 'this server has no WebSocket listener for dashboards (--ws-addr is empty)' });
    return;
  }
  window.tetherDashboard = { fleet, link }; // for debugging from the console
  const kept = store.load();
  if (kept) {
    who = { token: kept.token, id: kept.id, source: 'kept', remember: kept.remembered };
    login.signedIn(kept.id, kept.remembered);
  }
  connect(who);
}

/** storage is window[name], or null where reading it throws (storage disabled). */
function storage(name) {
  try {
    return window[name];
  } catch {
    return null;
  }
}

const TEXT = {
  connecting: 'connecting…',
  connected: 'connected',
  disconnected: 'disconnected — reconnecting',
  failed: 'not connected',
  refused: 'sign-in needed',
};

/** showLink draws the connection indicator and, while the link is down, the banner. */
function showLink(s) {
  const pill = $('connection');
  pill.dataset.state = s.state;
  pill.dataset.loaded = s.state === 'connected' && s.loaded ? 'true' : 'false';
  pill.querySelector('.conn-text').textContent = (TEXT[s.state] || s.state) + (s.state === 'connected' && !s.loaded ? ' · loading…' : '');
  pill.title = s.url ? `broker ${s.url}` : '';
  const banner = $('connection-banner');
  const down = s.state === 'disconnected' || s.state === 'failed' || (s.state === 'connecting' && (s.error || s.retries > 0));
  document.body.classList.toggle('stale', s.state === 'disconnected');
  banner.hidden = !down;
  banner.dataset.state = s.state;
  if (!down) return;
  if (s.state === 'failed') {
    banner.textContent = 'The dashboard cannot connect: ' + s.error + '.';
    return;
  }
  const since = new Date(s.since).toLocaleTimeString([], { hour12: false });
  banner.textContent = (s.state === 'disconnected'
    ? `Disconnected from the broker at ${s.url} since ${since} — reconnecting every ${RECONNECT_MS / 1000} s. Showing the last known state.`
    : `Cannot reach the broker at ${s.url} — retrying every ${RECONNECT_MS / 1000} s.`) + (s.error ? ` (${s.error})` : '') +
    (s.state === 'connecting' && s.url.startsWith('wss:') ? ' ' + tlsHint(s.url) : '');
}

main();
