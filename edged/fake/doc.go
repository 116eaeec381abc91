// Package fake is an in-memory workload runtime that implements
// driver.Driver and driver.Watcher without running anything. It backs fast
// edged tests and the fleet simulator, where thousands of simulated devices
// cannot each run real containers.
//
// The fake keeps its instances in a Runtime shared by every Driver value
// made from it, so a test can simulate an edged restart (a new Driver over
// the same runtime, see Driver.Reopen) and check adoption. Instances never
// do anything; a Behavior decides whether and when one exits by itself.
// Test helpers (Kill, Instances) poke at the state the way a crash or an
// operator would.
package fake
