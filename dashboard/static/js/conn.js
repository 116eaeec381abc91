// The broker link: one MQTT.js client over WebSocket, MQTT 3.1.1, clean
// session. Everything the page shows is retained, so a (re)connect only has
// to subscribe again to get the current state; nothing is queued for us
// while we are away and nothing needs to be.

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
 * onState({state, url, error, since, loaded}) whenever the link changes.
 */
export class Link {
  /**
   * @param {{url: string, base: string, filters: string[],
   *   gaps: () => {topics: string[], refilters: string[]}, onMessage: Function, onState: Function}} o
   *   base is "{root}/v1/", under which the sync topic lives; gaps lists
   *   exact topics the page expected but has not received, and filters
   *   whose retained messages it should ask for once more.
   */
  constructor({ url, base, filters, gaps, onMessage, onState }) {
    this.url = url;
    this.base = base;
    this.filters = filters;
    this.gaps = gaps || (() => ({ topics: [], refilters: [] }));
    this.stats = { barriersLost: 0, repairRounds: 0, repairedTopics: 0 };
    this.lastRx = 0; // performance.now() of the last message
    this.onMessage = onMessage;
    this.onState = onState;
    this.clientId = 'tether-dash-' + randomHex(8);
    this.desired = ''; // the one desired topic we watch, for the selected device
    this.state = { state: 'connecting', url, error: '', since: Date.now(), everConnected: false, loaded: false };
    this.client = null;
    this.session = 0; // bumped on every connect, so a stale subscribe loop stops
    this.barriers = new Map(); // nonce → resolve
  }

  start() {
    const mqtt = globalThis.mqtt;
    if (!mqtt || typeof mqtt.connect !== 'function') {
      this.#set('failed', 'the MQTT client (vendor/mqtt.min.js) did not load');
      return;
    }
    const c = mqtt.connect(this.url, {
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
    });
    this.client = c;
    const syncPrefix = this.base + 'sync/' + this.clientId + '/';
    c.on('connect', () => {
      this.state.everConnected = true;
      this.state.loaded = false;
      this.#set('connected', '');
      this.#subscribeAll(c, ++this.session).catch((err) => {
        if (c.connected) this.#set('connected', 'subscribe: ' + err.message);
      });
    });
    c.on('message', (topic, payload, packet) => {
      this.lastRx = performance.now();
      if (topic.startsWith(syncPrefix)) {
        this.barriers.get(topic.slice(syncPrefix.length))?.();
        return;
      }
      this.onMessage(topic, payload, !!packet.retain);
    });
    c.on('reconnect', () => this.#set(this.state.everConnected ? 'disconnected' : 'connecting', this.state.error));
    c.on('close', () => {
      if (this.state.state === 'connected') this.#set('disconnected', this.state.error);
    });
    c.on('offline', () => this.#set(this.state.everConnected ? 'disconnected' : 'connecting', this.state.error));
    c.on('error', (err) => {
      this.state.error = err && err.message ? err.message : String(err);
      this.onState({ ...this.state });
    });
  }

  // #subscribeAll subscribes one filter at a time, and waits for a round
  // trip on our own sync topic (see #barrier) before asking for the next,
  // so that the broker hands over one filter's retained messages at a time.
  //
  // It has to be careful: mochi queues all of a subscription's retained
  // messages at once and silently drops what does not fit in a client's
  // queue (8,192 by default). At 10,000 devices a fresh subscriber to
  // devices/+/facts gets 10,000 at once and, if the page is still busy with
  // the previous filter's, loses some of them. So afterwards it asks for the
  // retained topics the page still lacks (a device with presence but no
  // facts, say) by their exact names, a few hundred at a time, and for
  // every presence message again if the planner counts devices we have not
  // seen at all.
  //
  // QoS 0 throughout: a QoS 1 subscription is also held to the broker's
  // in-flight limit (1,024) and drops the rest at once. Retained state loses
  // nothing by QoS 0: what we miss is still retained for the repair.
  async #subscribeAll(c, session) {
    const syncPrefix = this.base + 'sync/' + this.clientId + '/';
    const live = () => session === this.session && c.connected;
    await c.subscribeAsync(syncPrefix + '+', { qos: 0 });
    const filters = [...this.filters];
    if (this.desired) filters.push(this.desired);
    for (const f of filters) {
      if (!live()) return;
      const grants = await c.subscribeAsync(f, { qos: 0 });
      if (grants.some((g) => g.qos === 128)) throw new Error(`the broker refused ${f}`);
      await this.#barrier(c, syncPrefix);
    }
    for (let round = 0; round < REPAIR_ROUNDS && live(); round++) {
      const { refilters } = this.gaps();
      for (const f of refilters) {
        await c.subscribeAsync(f, { qos: 0 }); // the same subscription again: its retained messages again
        await this.#barrier(c, syncPrefix);
      }
      const { topics } = this.gaps();
      if (topics.length === 0 && refilters.length === 0) break;
      this.stats.repairRounds++;
      this.stats.repairedTopics += topics.length;
      for (let i = 0; i < topics.length && live(); i += REPAIR_CHUNK) {
        const chunk = topics.slice(i, i + REPAIR_CHUNK);
        await c.subscribeAsync(chunk, { qos: 0 });
        await this.#barrier(c, syncPrefix);
        // The wildcard subscriptions carry on; these were for the retained copy only.
        if (live()) await c.unsubscribeAsync(chunk);
      }
    }
    if (live()) {
      this.state.loaded = true;
      this.onState({ ...this.state });
    }
  }

  // #barrier resolves true once a message we publish on our own sync topic
  // comes back: the broker delivers a client's messages in order, so
  // everything queued for us before it has arrived. It resolves false when
  // nothing has arrived for QUIET_MS, or after BARRIER_MS: the broker may
  // have dropped the message itself (see above), or may not let us publish
  // there.
  #barrier(c, syncPrefix) {
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
          this.stats.barriersLost++;
          done(false);
        }
      }, 100);
      this.barriers.set(nonce, () => done(true));
      c.once('close', onClose);
      c.publish(syncPrefix + nonce, 'sync', { qos: 0, retain: false });
    });
  }

  /** watchDesired subscribes to one device's desired topic ("" for none) instead of the previous one. */
  watchDesired(topic) {
    if (topic === this.desired) return;
    const c = this.client;
    if (c && c.connected && this.desired) c.unsubscribe(this.desired);
    this.desired = topic;
    if (c && c.connected && topic) c.subscribe(topic, { qos: 0 });
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

function randomHex(n) {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}
