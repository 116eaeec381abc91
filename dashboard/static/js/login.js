// The sign-in form, shown when the broker refuses this page, and the
// "signed in as token …" control with its Sign out button. It only draws
// and reports: main.js decides when to show it and what a token does.
// Nothing here logs, and the pasted token leaves the input as soon as the
// broker accepts it.

import { $ } from './dom.js';

export class Login {
  /**
   * @param {{onSubmit: (text: string, remember: boolean) => void, onSignOut: () => void}} o
   *   onSubmit gets the pasted text as it is: checking it is main's job.
   */
  constructor({ onSubmit, onSignOut }) {
    this.box = $('login');
    this.form = $('login-form');
    this.input = $('login-token');
    this.remember = $('login-remember');
    this.reason = $('login-reason');
    this.err = $('login-error');
    this.status = $('login-status');
    this.submit = $('login-submit');
    this.main = document.getElementById('main');
    this.who = $('signed-in');
    this.whoId = $('signed-in-id');
    this.form.addEventListener('submit', (e) => {
      e.preventDefault(); // nothing is posted anywhere (the CSP says form-action 'none')
      onSubmit(this.input.value, this.remember.checked);
    });
    this.input.addEventListener('input', () => {
      if (!this.err.hidden) this.error('');
    });
    $('sign-out').addEventListener('click', () => onSignOut());
  }

  get shown() { return !this.box.hidden; }

  /** show puts the form in place of the views, saying why. */
  show(reason) {
    this.reason.textContent = reason;
    this.busy('');
    if (this.shown) return;
    this.box.hidden = false;
    this.main.hidden = true;
    this.input.focus();
  }

  /** hide puts the views back and forgets what was typed. */
  hide() {
    this.box.hidden = true;
    this.main.hidden = false;
    this.input.value = '';
    this.error('');
    this.busy('');
  }

  /** error says what is wrong ("" for nothing); the form stays, with what was typed. */
  error(msg) {
    this.err.textContent = msg;
    this.err.hidden = !msg;
    if (msg) {
      this.input.setAttribute('aria-invalid', 'true');
      this.busy('');
      this.input.focus();
    } else {
      this.input.removeAttribute('aria-invalid');
    }
  }

  /** busy says what is going on while signing in ("" when idle) and disables the button meanwhile. */
  busy(msg) {
    this.status.textContent = msg;
    this.status.hidden = !msg;
    this.submit.disabled = !!msg;
    this.form.setAttribute('aria-busy', msg ? 'true' : 'false');
  }

  /** signedIn shows which token the page uses, with Sign out ("" hides it). */
  signedIn(id, remembered) {
    this.who.hidden = !id;
    this.whoId.textContent = id;
    this.who.dataset.remembered = remembered ? 'true' : 'false';
    this.who.title = id ? `Signed in with viewer or operator token ${id}` + (remembered ? ', remembered on this browser' : ', for this tab') : '';
  }
}
