// Package dashboard serves Tether's live web dashboard: a static page that is
// itself an MQTT client. The browser subscribes over the broker's WebSocket
// listener to the same retained status topics every other party reads
// (fleet summary, job status and history, device presence, facts, reports,
// scheduling and events), so the server has no dashboard API to poll and no
// state to keep for it. When the broker refuses anonymous pages the page
// asks for a viewer or operator token and connects as "token/<id>" with a
// client id under that username; Config.WSTLS tells it to use wss://.
//
// The HTML, CSS and ES modules are embedded with go:embed, along with the
// browser bundle of MQTT.js vendored from npm (static/vendor/mqtt.min.js;
// `npm run check-vendor` proves it matches package-lock.json). Building Go
// never needs npm; only the browser tests in test/ do.
package dashboard
