// Package server wires a Tether server together: the embedded broker (or
// a connection to an external one, see ExternalBroker), the planner's
// store and the planner, the admin topics, and a small HTTP listener for
// health checks and the dashboard. `tether server` and `tether dev` are
// thin shells over Start.
package server
