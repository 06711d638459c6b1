package main

import (
	"fmt"
	"io"
)

func serveFUSE(args []string, stderr io.Writer) error {
	return fmt.Errorf("%w: serve fuse is not built yet", errUsage)
}
