// Viewer tokens: their shape, the MQTT credentials and client id they give,
// how the broker says no, and where the page keeps a token. No DOM and no
// network, so that node tests it (test/auth.test.mjs).
//
// An operator shows a token as one string, "<id>.<secret>": the id is 12
// lowercase hex characters, the secret base64url without padding (so it
// never contains a '.'). Over MQTT the username is "token/<id>" and the
// password the secret; the broker admits such a client only when its client
// id starts with "<username>/".

/** ID_LEN is the length of a token's id. */
export const ID_LEN = 12;

/** TokenError says what is wrong with a pasted token; its message never quotes the secret. */
export class TokenError extends Error {}

/**
 * parseToken checks the shape of a pasted token (surrounding whitespace,
 * as copying from a terminal adds, is ignored) and returns its parts. It
 * throws a TokenError saying precisely what is wrong.
 * @param {string} text
 * @returns {{id: string, secret: string}}
 */
export function parseToken(text) {
  const t = String(text ?? '').trim();
  if (t === '') throw new TokenError('Paste a token: it looks like 0a1b2c3d4e5f.SECRET.');
  const ws = t.search(/\s/);
  if (ws >= 0) throw new TokenError(`A token has no spaces or line breaks; this one has one at character ${ws + 1}.`);
  const dots = t.split('.').length - 1;
  if (dots === 0) throw new TokenError('A token is <id>.<secret>, with a \u2018.\u2019 after the 12-character id; this one has no \u2018.\u2019.');
  if (dots > 1) throw new TokenError(`A token has exactly one \u2018.\u2019, between its id and its secret; this one has ${dots}.`);
  const [id, secret] = t.split('.');
  if (id.length !== ID_LEN) {
    throw new TokenError(`The id (before the \u2018.\u2019) is ${ID_LEN} hex characters; this one has ${id.length}.`);
  }
  const badId = id.search(/[^0-9a-f]/);
  if (badId >= 0) {
    const c = id[badId];
    throw new TokenError(/[A-F]/.test(c)
      ? `The id (before the \u2018.\u2019) is lowercase hex; character ${badId + 1} is the uppercase \u2018${c}\u2019.`
      : `The id (before the \u2018.\u2019) is hex (0-9, a-f); character ${badId + 1} is \u2018${c}\u2019.`);
  }
  if (secret === '') throw new TokenError('The secret (after the \u2018.\u2019) is missing.');
  // Only characters that cannot be part of a valid secret are ever named.
  const badSecret = secret.search(/[^A-Za-z0-9_-]/);
  if (badSecret >= 0) {
    const c = secret[badSecret];
    const why = c === '=' ? ', and has no \u2018=\u2019 padding'
      : c === '+' || c === '/' ? ` (\u2018${c}\u2019 is standard base64, not base64url)` : '';
    throw new TokenError(`The secret (after the \u2018.\u2019) is base64url: A-Z, a-z, 0-9, \u2018-\u2019 and \u2018_\u2019${why}; ` +
      `character ${ID_LEN + 1 + badSecret + 1} of the token is \u2018${c}\u2019.`);
  }
  // Unpadded base64 of whole bytes is never 1 more than a multiple of 4
  // characters long: such a secret lost characters on the way.
  if (secret.length % 4 === 1) {
    throw new TokenError(`The secret (after the \u2018.\u2019) is incomplete: ${secret.length} characters cannot be base64url of whole bytes. Was the end cut off?`);
  }
  return { id, secret };
}

/** usernameOf is the MQTT username of a token's id. */
export function usernameOf(id) {
  return 'token/' + id;
}

/**
 * credentials are the MQTT CONNECT fields for a token: username
 * "token/<id>", password the secret. `id` is there for display.
 * @param {{id: string, secret: string}} tok
 */
export function credentials(tok) {
  return { id: tok.id, username: usernameOf(tok.id), password: tok.secret };
}

/**
 * clientIdFor is the MQTT client id of a page: "<username>/dash-<random>"
 * with credentials, as the broker requires of every client that is not a
 * device, and "tether-dash-<random>" for an anonymous one (dev mode).
 * @param {string} username "" when anonymous
 * @param {string} random a fresh random suffix
 */
export function clientIdFor(username, random) {
  return username ? `${username}/dash-${random}` : `tether-dash-${random}`;
}

/**
 * REFUSALS are the CONNACK codes by which a broker turns a client away for
 * who it is: MQTT 3.1.1 return codes 4 (bad username or password) and 5
 * (not authorized), MQTT 5 reason codes 134 and 135 (the same). A sign-in
 * cannot tell them apart usefully: the broker does not say whether the id,
 * the secret or the client id was wrong.
 */
export const REFUSALS = new Map([
  [4, 'bad username or password'],
  [5, 'not authorized'],
  [134, 'bad username or password'],
  [135, 'not authorized'],
]);

/**
 * refusalOf returns the words for a CONNACK refusal of who the client is,
 * or "" when err is anything else (a network error, the server busy...).
 * MQTT.js emits a CONNACK refusal as an error whose numeric code is the
 * return or reason code.
 */
export function refusalOf(err) {
  if (!err || typeof err.code !== 'number') return '';
  return REFUSALS.get(err.code) || '';
}

/** STORAGE_KEY is where a token is kept, in sessionStorage or (remembered) localStorage. */
export const STORAGE_KEY = 'tether.dashboard.token';

/**
 * TokenStore keeps the token the page signed in with: in sessionStorage
 * (this tab, until it closes), and also in localStorage when the user asked
 * to be remembered on this browser. Storage that throws (disabled, full,
 * private modes) is treated as empty.
 */
export class TokenStore {
  /**
   * @param {Storage|null} session sessionStorage
   * @param {Storage|null} local localStorage
   */
  constructor(session, local) {
    this.session = session;
    this.local = local;
  }

  /**
   * load returns the kept token, the tab's before the remembered one, or
   * null. A kept value whose shape is wrong is dropped.
   * @returns {{token: string, id: string, secret: string, remembered: boolean} | null}
   */
  load() {
    for (const [s, remembered] of [[this.session, false], [this.local, true]]) {
      const v = get(s);
      if (v == null) continue;
      try {
        const tok = parseToken(v);
        return { token: v, ...tok, remembered: remembered || get(this.local) === v };
      } catch {
        del(s);
      }
    }
    return null;
  }

  /** save keeps token for this tab, and on this browser when remember is set (else forgets any remembered one). */
  save(token, remember) {
    set(this.session, token);
    if (remember) set(this.local, token);
    else del(this.local);
  }

  /** clear forgets the token everywhere. */
  clear() {
    del(this.session);
    del(this.local);
  }
}

function get(s) {
  try {
    return s ? s.getItem(STORAGE_KEY) : null;
  } catch {
    return null;
  }
}

function set(s, v) {
  try {
    s?.setItem(STORAGE_KEY, v);
  } catch {
    // Storage disabled or full: the token lasts as long as the page.
  }
}

function del(s) {
  try {
    s?.removeItem(STORAGE_KEY);
  } catch {
    // as in set
  }
}
