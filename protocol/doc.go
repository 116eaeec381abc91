// Package protocol is version 1 of Tether's wire contract: MQTT topic
// builders and parsers, the JSON message types exchanged between operators,
// the planner and edged, and their validation.
//
// It performs no I/O, starts no goroutines and logs nothing. Every decoder
// here reads untrusted bytes from the network; each has a fuzz target.
// Validation reports every problem at once, each with the field path that
// caused it, joined with errors.Join.
package protocol
