//go:build race

package thinblock_test

// raceBuild is set under the race detector, which slows the concurrency
// tests about tenfold: they then run fewer rounds.
const raceBuild = true
