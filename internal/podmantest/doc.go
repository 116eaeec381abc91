// Package podmantest gives tests a real Podman: a service of their own on a
// private socket, a busybox image imported from the host's static busybox
// (no registry needed), and cleanup of the containers a test leaves
// behind. It drives Podman through its CLI and HTTP only, so it needs no
// build tags and end-to-end tests can use it as well as the Podman
// driver's tests.
//
// Tests keep apart by device id: each uses ids from NewDevice, and the
// drivers only ever list and touch containers labelled with their device.
package podmantest
