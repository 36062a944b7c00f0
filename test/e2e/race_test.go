//go:build race

package e2e

// raceEnabled: the tests run with -race, so palisaded is built with it too and any
// data race it hits under real traffic fails the test that saw it.
const raceEnabled = true
