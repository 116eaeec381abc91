// Package e2e holds end-to-end tests that run the real tether and edged
// binaries against real Podman, as an operator would. The binaries are
// built once per test run, with the Podman build tags.
package e2e
