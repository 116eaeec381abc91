// Package pki is the small certificate authority behind `tether tls`, for
// installations without a PKI of their own: one self-signed CA, the
// broker's server certificate, and client certificates whose CommonName is a
// device id. It also turns PEM files, from this CA or any other, into the
// tls.Config the broker and its clients use.
//
// Everything lives as PEM files in one directory (see Init): CA and server
// files at its top, client certificates under clients/. Keys are ECDSA P-256
// in PKCS #8, readable only by their owner. Nothing here ever replaces an
// existing file, so running a command twice cannot rotate a CA that devices
// already trust.
//
// The package does file and crypto work only: no network, no logging.
package pki
