// Package drivertest is the contract suite every driver.Driver must pass:
// the Podman driver against real Podman, the exec driver against real
// processes and the fake against itself. It checks what edged relies on
// (see the driver package): List finds instances by labels alone and per
// device, exit codes come through, Stop and Remove honour ErrNotFound, a
// restarted edged adopts running instances without restarting them, and a
// Watcher signals exits.
package drivertest
