package fuseloop

import (
	"fmt"
	"os"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// Transport names, as the transport= option and status spell them.
const (
	TransportAuto    = "auto"
	TransportIOURing = "io_uring"
	TransportDevFUSE = "dev-fuse"
	TransportGoFUSE  = "go-fuse"
)

// Transports lists the transports Options.Transport accepts.
var Transports = []string{TransportAuto, TransportIOURing, TransportDevFUSE, TransportGoFUSE}

// Options says how to mount and serve.
type Options struct {
	// Transport is one of Transports; empty means auto.
	Transport string
	// Mount holds go-fuse's mount options: the mount's -o strings,
	// AllowOther, FsName, Name (the subtype), MaxWrite, capabilities,
	// Debug, Logger, PanicHandler. DirectMount is decided here (mount(2)
	// as root, fusermount3 otherwise) and ignored.
	Mount fuse.MountOptions
	// Ended, when set, is called once the connection has ended and
	// every request has been answered, before Wait returns, on the
	// goroutine that saw the last loop end: the filesystem lets go of
	// the files it holds there, so that a script unmounting a layer's
	// filesystem right after the union finds it free, as after kernel
	// overlay. Requests never run during or after it.
	Ended func()
}

// CheckTransport returns an error naming the accepted values if name is
// not a transport.
func CheckTransport(name string) error {
	for _, t := range Transports {
		if name == t {
			return nil
		}
	}
	return fmt.Errorf("transport %q: want one of %s", name, strings.Join(Transports, ", "))
}

// uringParameter is where the kernel says whether FUSE-over-io_uring is
// switched on (off by default; root can write Y to it).
const uringParameter = "/sys/module/fuse/parameters/enable_uring"

// kernelOffersIOURing reports whether the fuse module has io_uring
// enabled, and if not, why.
func kernelOffersIOURing() (bool, string) {
	data, err := os.ReadFile(uringParameter)
	if err != nil {
		return false, fmt.Sprintf("the kernel has no FUSE-over-io_uring (%v)", err)
	}
	if strings.TrimSpace(string(data)) != "Y" {
		return false, uringParameter + " is not Y"
	}
	return true, ""
}
