// The broker link: one MQTT.js client over WebSocket, MQTT 3.1.1, clean
// session. Everything the page shows is retained, so a (re)connect only has
// to subscribe again to get the current state; nothing is queued for us
// while we are away and nothing needs to be.
//
// The broker may want to know who we are (tether server: a viewer or
// operator token; tether dev lets anonymous pages in from loopback), and
// may refuse some filters (a viewer reads status topics only). start()
// takes the credentials; the page (main.js) decides which, and what to do
// when the broker refuses them.

import { clientIdFor, refusalOf } from './auth.js';

/** RECONNECT_MS is how often MQTT.js retries a lost link. */
export const RECONNECT_MS = 1500;

/** BARRIER_MS bounds the wait for one subscription's retained messages. */
const BARRIER_MS = 10_000;
/**
 * QUIET_MS: when nothing at all has arrived for this long, the barrier
 * message was lost (dropped with others by a full queue) and waiting longer
 * is pointless.
 */
const QUIET_MS = 600;
/** REPAIR_CHUNK is how many exact topics one repair SUBSCRIBE asks for. */
const REPAIR_CHUNK = 200;
/** REPAIR_ROUNDS bounds the repair passes after each connect. */
const REPAIR_ROUNDS = 3;

/**
 * Link owns the MQTT client.
 * onMessage(topic, payload, retained) runs for every message;
 * onState({state, url, error, refusal, tokenId, since, everConnected, retries, loaded})
 * whenever the link changes; onAccess(filter, granted) with the broker's
 * answer to every subscription of a wildcard filter or desired topic.
 *
 * state is "connecting", "connected", "disconnected" (and reconnecting),
 * "failed" (no MQTT client), or "refused": the broker turned away who we
 * are (no credentials, or a token it does not accept). A refused link does
 * not retry; start it again with other credentials.
 */
export class Link {
  /**
   * @param {{url: string, base: string, filters: string[],
   *   gaps: () => {topics: string[], refilters: string[]}, onMessage: Function, onState: Function,
   *   onAccess?: Function}} o
   *   base is "{root}/v1/", under which the sync topic lives; gaps lists
   *   exact topics the page expected but has not received, and filters
   *   whose retained messages it should ask for once more.
   */
  constructor({ url, base, filters, gaps, onMessage, onState, onAccess }) {
    this.url = url;
    this.base = base;
    this.filters = filters;
    this.gaps = gaps || (() => ({ topics: [], refilters: [] }));
    this.stats = { barriersLost: 0, repairRounds: 0, repairedTopics: 0 };
    this.lastRx = 0; // performance.now() of the last message
    this.onMessage = onMessage;
    this.onState = onState;
    this.onAccess = onAccess || (() => {});
    this.clientId = '';
    this.syncPrefix = '';
    this.desired = ''; // the one desired topic we watch, for the selected device
    this.state = { state: 'connecting', url, error: '', refusal: '', tokenId: '', since: Date.now(), everConnected: false, retries: 0, loaded: false };
    this.client = null;
    this.session = 0; // bumped on every connect and stop, so a stale subscribe loop stops
    this.barriers = new Map(); // nonce → resolve
    this.syncDenied = false; // the broker refused our sync topic: no barriers
  }

  /**
   * start connects: anonymously when creds is null, else with a token's
   * MQTT credentials ({id, username, password}, see auth.js) and a client
   * id under its username, as the broker requires. It ends any connection
   * of a previous start. The password goes to MQTT.js only: it is never part
   * of the state handed to onState.
   */
  start(creds = null) {
    this.stop();
    const username = creds ? creds.username : '';
    this.clientId = clientIdFor(username, randomHex(6));
    this.syncPrefix = this.base + 'sync/' + this.clientId + '/';
    this.syncDenied = false;
    this.state = { state: 'connecting', url: this.url, error: '', refusal: '', tokenId: creds ? creds.id : '',
      since: Date.now(), everConnected: false, retries: 0, loaded: false };
    const mqtt = globalThis.mqtt;
    if (!mqtt || typeof mqtt.connect !== 'function') {
      this.#set('failed', 'the MQTT client (vendor/mqtt.min.js) did not load');
      return;
    }
    this.onState({ ...this.state });
    const opts = {
      protocolVersion: 4,
      clean: true,
      clientId: this.clientId,
      reconnectPeriod: RECONNECT_MS,
      connectTimeout: 5000,
      keepalive: 15,
      // We subscribe ourselves on every connect (see below), so MQTT.js
      // must not do it a second time.
      resubscribe: false,
      queueQoSZero: false,
      // A CONNACK refusal stops MQTT.js's retries unless this is set. We
      // want them for a broker that is busy or starting; a refusal of who
      // we are ends the client in the error handler instead (see below).
      reconnectOnConnackError: true,
    };
    if (creds) {
      opts.username = creds.username;
      opts.password = creds.password;
    }
    this.#connect(mqtt, opts);
  }

  #connect(mqtt, opts) {
    const c = mqtt.connect(this.url, opts);
    this.client = c;
    const mine = () => this.client === c;
    c.on('connect', () => {
      if (!mine()) return;
      this.state.everConnected = true;
      this.state.loaded = false;
      this.#set('connected', '');
      this.#subscribeAll(c, ++this.session).catch((err) => {
        if (mine() && c.connected) this.#set('connected', 'subscribe: ' + err.message);
      });
    });
    c.on('message', (topic, payload, packet) => {
      if (!mine()) return;
      this.lastRx = performance.now();
      if (topic.startsWith(this.syncPrefix)) {
        this.barriers.get(topic.slice(this.syncPrefix.length))?.();
        return;
      }
      this.onMessage(topic, payload, !!packet.retain);
    });
    c.on('reconnect', () => {
      if (!mine()) return;
      // A browser says nothing about why a WebSocket failed: counting the
      // retries is how the page knows the broker is not answering.
      this.state.retries++;
      this.#set(this.state.everConnected ? 'disconnected' : 'connecting', this.state.error);
    });
    c.on('close', () => {
      if (mine() && this.state.state === 'connected') this.#set('disconnected', this.state.error);
    });
    c.on('offline', () => {
      if (mine()) this.#set(this.state.everConnected ? 'disconnected' : 'connecting', this.state.error);
    });
    c.on('error', (err) => {
      if (!mine()) return;
      const refusal = refusalOf(err);
      if (refusal) {
        // Retrying the same credentials cannot help: stop here. end()
        // runs before MQTT.js would schedule the retry, and prevents it.
        this.stop();
        this.state.refusal = refusal;
        this.#set('refused', err.message);
        return;
      }
      this.state.error = err && err.message ? err.message : String(err);
      this.onState({ ...this.state });
    });
  }

  /** stop ends the connection, if any, for good. */
  stop() {
    const c = this.client;
    this.client = null;
    this.session++;
    if (c) c.end(true);
  }

  // #subscribeAll subscribes one filter at a time, and waits for a round
  // trip on our own sync topic (see #barrier) before asking for the next,
  // so that the broker hands over one filter's retained messages at a time.
  //
  // It has to be careful: Tether's own broker hands a wildcard
  // subscription's retained messages over at the page's pace and drops
  // none, but other brokers (Mosquitto, or mochi alone) queue all of them at
  // once and silently drop what does not fit in a client's queue. At 10,000
  // devices a fresh subscriber to devices/+/facts gets 10,000 at once and,
  // if the page is still busy with the previous filter's, loses some of
  // them. So afterwards it asks for the retained topics the page still
  // lacks (a device with presence but no facts, say) by their exact names,
  // a few hundred at a time, and for every presence message again if the
  // planner counts devices we have not seen at all.
  //
  // A filter the broker refuses (a viewer token may read status topics
  // only) is reported to onAccess and skipped: the page says "not
  // permitted" there, and the rest loads as usual.
  //
  // QoS 0 throughout: a QoS 1 subscription is also held to the broker's
  // in-flight limit (1,024) and drops the rest at once. Retained state loses
  // nothing by QoS 0: what we miss is still retained for the repair.
  async #subscribeAll(c, session) {
    const live = () => session === this.session && c.connected;
    const [sync] = await grants(c, [this.syncPrefix + '+']);
    // Without our sync topic a barrier can only time out: wait for quiet instead.
    this.syncDenied = !sync;
    const filters = [...this.filters];
    if (this.desired) filters.push(this.desired);
    for (const f of filters) {
      if (!live()) return;
      const [ok] = await grants(c, [f]);
      this.onAccess(f, ok);
      if (ok) await this.#barrier(c);
    }
    for (let round = 0; round < REPAIR_ROUNDS && live(); round++) {
      const { refilters } = this.gaps();
      for (const f of refilters) {
        await grants(c, [f]); // the same subscription again: its retained messages again
        await this.#barrier(c);
      }
      const { topics } = this.gaps();
      if (topics.length === 0 && refilters.length === 0) break;
      this.stats.repairRounds++;
      this.stats.repairedTopics += topics.length;
      for (let i = 0; i < topics.length && live(); i += REPAIR_CHUNK) {
        const chunk = topics.slice(i, i + REPAIR_CHUNK);
        const ok = await grants(c, chunk);
        // A broker that lets us read a wildcard filter but not the exact
        // topics under it leaves nothing to repair.
        if (!ok.some(Boolean)) return this.#loaded(live);
        await this.#barrier(c);
        // The wildcard subscriptions carry on; these were for the retained copy only.
        if (live()) await c.unsubscribeAsync(chunk.filter((_, j) => ok[j]));
      }
    }
    this.#loaded(live);
  }

  #loaded(live) {
    if (!live()) return;
    this.state.loaded = true;
    this.onState({ ...this.state });
  }

  // #barrier resolves true once a message we publish on our own sync topic
  // comes back: the broker delivers a client's messages in order, so
  // everything queued for us before it has arrived. It resolves false when
  // nothing has arrived for QUIET_MS, or after BARRIER_MS: the broker may
  // have dropped the message itself (see above), or may not let us publish
  // there (then we do not publish at all: see syncDenied).
  #barrier(c) {
    const nonce = randomHex(6);
    return new Promise((resolve) => {
      const started = performance.now();
      const done = (ok) => {
        clearInterval(timer);
        this.barriers.delete(nonce);
        c.removeListener('close', onClose);
        resolve(ok);
      };
      const onClose = () => done(true); // the next connect starts over
      const timer = setInterval(() => {
        const now = performance.now();
        if (now - Math.max(this.lastRx, started) > QUIET_MS || now - started > BARRIER_MS) {
          if (!this.syncDenied) this.stats.barriersLost++;
          done(false);
        }
      }, 100);
      c.once('close', onClose);
      if (this.syncDenied) return;
      this.barriers.set(nonce, () => done(true));
      c.publish(this.syncPrefix + nonce, 'sync', { qos: 0, retain: false });
    });
  }

  /**
   * watchDesired subscribes to one device's desired topic ("" for none)
   * instead of the previous one, and reports the broker's answer to
   * onAccess: a viewer token may not read desired state.
   */
  watchDesired(topic) {
    if (topic === this.desired) return;
    const c = this.client;
    if (c && c.connected && this.desired) c.unsubscribe(this.desired);
    this.desired = topic;
    if (c && c.connected && topic) {
      grants(c, [topic]).then(([ok]) => this.onAccess(topic, ok), () => {});
    }
  }

  #set(state, error) {
    const changed = state !== this.state.state;
    this.state.state = state;
    this.state.error = error;
    if (changed) this.state.since = Date.now();
    this.onState({ ...this.state });
  }
}

/**
 * grants subscribes to filters at QoS 0 and resolves, per filter, whether
 * the broker granted it. MQTT.js rejects a SUBACK that refuses any filter
 * (return code 0x80) as an error, but hands over the packet with every
 * code, which is what counts here; other errors (the link closed) reject.
 * @returns {Promise<boolean[]>}
 */
export function grants(c, filters) {
  return new Promise((resolve, reject) => {
    c.subscribe(filters, { qos: 0 }, (err, _subs, packet) => {
      const codes = packet && packet.granted;
      if (Array.isArray(codes) && codes.length === filters.length) resolve(codes.map((x) => (x & 0x80) === 0));
      else if (err) reject(err);
      else resolve(filters.map(() => true));
    });
  });
}

/**
 * brokerURL is where the broker's WebSocket listener is, seen from this
 * page: wss:// when the listener speaks TLS (config.json's ws_tls), or when
 * the page came over https (browsers refuse ws:// from an https page: a
 * TLS-terminating proxy in front of both is the usual setup); else ws://.
 */
export function brokerURL(loc, wsPort, tls = false) {
  const scheme = tls || loc.protocol === 'https:' ? 'wss' : 'ws';
  // location.hostname keeps the brackets of an IPv6 literal.
  return `${scheme}://${loc.hostname}:${wsPort}`;
}

/**
 * tlsHint is what the page adds while a wss:// link has never connected.
 * A browser gives a page no reason when a WebSocket fails, and the usual
 * one with TLS is a certificate it does not trust: tether server's own CA
 * (DATA-DIR/tls/ca.pem) is trusted nowhere until someone imports it. A
 * browser asks nobody about the certificate of a WebSocket connection, but
 * remembers an exception made by opening the same host and port as a page.
 */
export function tlsHint(url) {
  return `With wss://, this browser must trust the certificate authority of the broker's certificate ` +
    `(tether server's own: DATA-DIR/tls/ca.pem, imported as an authority), ` +
    `or accept the certificate once at ${url.replace(/^wss:/, 'https:')}/.`;
}

function randomHex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}
