package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Every command answers --help with its synopsis (positional arguments
// included) and exit 0; the groups list their commands; --version names
// the build.
func TestEveryCommandHasHelpAndThereIsAVersion(t *testing.T) {
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, code := thinblockCmd(append(strings.Fields(c.name), "--help")...)
			assert.Equal(t, 0, code, stderr)
			assert.True(t, strings.HasPrefix(stderr, "usage: thinblock "+c.name+" "+c.synopsis+"\n"), "%s", stderr)
			assert.Contains(t, stderr, "--pool", "flags are listed")
		})
	}
	for _, group := range []string{"pool", "serve"} {
		_, stderr, code := thinblockCmd(group, "--help")
		assert.Equal(t, 0, code, stderr)
		for _, c := range commands() {
			if c.group == group {
				assert.Contains(t, stderr, c.name)
			} else {
				assert.NotContains(t, stderr, "  "+c.name+" ")
			}
		}
		_, _, code = thinblockCmd(group)
		assert.Equal(t, 2, code, "a group without a subcommand is a usage error")
	}
	stdout, _, code := thinblockCmd("--version")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `^thinblock \S+ .*go1\.\d+`, stdout)
	_, stderr, code := thinblockCmd("serve", "bogus")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "unknown command")
}
