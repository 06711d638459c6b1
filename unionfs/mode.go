package unionfs

// Mode says how a mounted union serves its requests, for status
// displays and logs.
type Mode struct {
	// Transport is how requests reach the daemon: io_uring, dev-fuse
	// or go-fuse (internal/fuseloop).
	Transport string `json:"transport"`
	// WhyNotIOURing says why io_uring does not serve the mount; empty
	// when it does.
	WhyNotIOURing string `json:"why_not_io_uring,omitempty"`
	// Passthrough is set when open upper files are read and written by
	// the kernel itself (FUSE passthrough).
	Passthrough bool `json:"passthrough"`
	// LowerPassthrough is set when read-only opens of lower files are
	// passthrough too, so unions over one lower share its page cache.
	LowerPassthrough bool `json:"lower_passthrough"`
	// Writeback is set when the kernel caches writes (its writeback
	// cache), where passthrough is not used.
	Writeback bool `json:"writeback"`
	// Whiteout is the format new whiteouts are written in.
	Whiteout string `json:"whiteout"`
	// Metacopy is set when metadata changes copy up metadata only.
	Metacopy bool `json:"metacopy"`
	// ReadOnly is set for a union without a writable layer or mounted ro.
	ReadOnly bool `json:"read_only"`
}

// Mode reports how the union serves requests now (the whiteout format
// can change once, when device nodes are refused).
func (u *FS) Mode() Mode {
	u.ns.RLock()
	format := u.wformat.String()
	u.ns.RUnlock()
	return Mode{
		Transport:        u.transport,
		WhyNotIOURing:    u.whyNotIOURing,
		Passthrough:      u.passthrough.Load(),
		LowerPassthrough: u.passthrough.Load() && u.opts.LowerPassthrough,
		Writeback:        u.writeback,
		Whiteout:         format,
		Metacopy:         u.opts.Metacopy,
		ReadOnly:         !u.writable(),
	}
}
