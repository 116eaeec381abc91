// Command viewerbroker is a test fixture for the dashboard's sign-in: a
// real MQTT broker (mochi, the one tether embeds) that admits clients the
// way tether server admits dashboards, and the dashboard on an HTTP
// listener. The browser tests (dashboard/test/signin.test.mjs) build and
// run it; nothing ships it.
//
// The rules it applies are the contract the page is written against:
//
//   - A token "<id>.<secret>" connects as username "token/<id>" with the
//     secret as password, and only with a client id that starts with
//     "token/<id>/". Anything else is refused (CONNACK 5, not authorized).
//     Anonymous clients are refused unless -anonymous is given.
//   - An operator token (and, with -anonymous, an anonymous client) may
//     do anything.
//   - A viewer token may subscribe to the status filters below, or to any
//     filter they cover (an exact topic), and to its own sync topic
//     "{base}/sync/{client id}/+"; it may publish to that sync topic only.
//     Everything else is refused (SUBACK 0x80).
//
// It prints one line per CONNECT and per subscribed filter, for the tests
// to read, and never prints a secret.
package main
