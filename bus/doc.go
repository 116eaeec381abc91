// Package bus is Tether's MQTT client: a thin layer over paho that the
// planner, the CLI and tests share. It re-subscribes after every reconnect
// (paho's ResumeSubs does not), hands messages to handlers on one goroutine
// of its own through an unbounded queue so that a handler may publish
// without deadlocking paho's router, and never waits on a token without a
// timeout.
package bus
