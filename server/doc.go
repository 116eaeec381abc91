// Package server wires a Tether server together: the embedded broker, the
// planner's store and the planner, and a small HTTP listener for health
// checks. `tether server` and `tether dev` are thin shells over Run.
package server
