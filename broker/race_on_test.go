//go:build race

package broker

// raceDetector is true under go test -race. mochi's retained index reads a
// topic node's retained path without the lock its writer holds (mochi
// issue #200, still in v2.7.9): a subscription made while retained messages
// are published to new topics is reported as a data race inside mochi. The
// tests that do that on purpose skip under the race detector.
const raceDetector = true
