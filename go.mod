module github.com/unionmount/unionmount

go 1.26.8

require (
	github.com/hanwen/go-fuse/v2 v2.12.1
	github.com/spf13/pflag v1.1.0
	golang.org/x/sys v0.49.0
)
