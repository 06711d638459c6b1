//go:build !race

package thinblock_test

// raceBuild is set under the race detector (see race_test.go).
const raceBuild = false
