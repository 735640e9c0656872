package locks

import (
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits of the table. They are constants, not configuration: every node
// must apply the same log to the same result, so anything a command is
// checked against at apply time must be the same everywhere. Limits that may
// differ between nodes (such as the minimum TTL, which follows the election
// timeout) are checked by the server before it proposes.
const (
	MaxNameBytes       = 512
	MaxOwnerBytes      = 256
	MaxValueBytes      = 4096
	MaxReasonBytes     = 1024
	MaxLocksPerAcquire = 64
	MaxCapacity        = 1 << 20
	MaxTTL             = 24 * time.Hour
	MaxLockDelay       = time.Hour
	// MaxLeases bounds the whole table.
	MaxLeases = 1 << 21
	// MaxLeasesPerPrincipal bounds the leases granted under one token, so
	// that one client cannot take the whole table's leases. Without
	// tokens there is no telling clients apart, and only MaxLeases holds.
	MaxLeasesPerPrincipal = 1 << 18
	// MaxPerLease bounds the grants plus waits of one lease, counted per
	// lock.
	MaxPerLease = 10000
	// MaxWaitersPerLock bounds one queue.
	MaxWaitersPerLock = 10000
	// MaxWaitersPerNamespace bounds the queued waiters of all the locks
	// whose names share a first segment, so one client cannot fill the
	// table.
	MaxWaitersPerNamespace = 100000
	// dedupPerLease is how many recent request results a lease remembers.
	dedupPerLease = 32
)

// ValidateName checks a lock name: UTF-8, 1 to MaxNameBytes bytes,
// "/"-separated segments that are not empty, no control characters.
func ValidateName(name string) error {
	if err := validateName(name); err != nil {
		return err
	}
	return nil
}

func validateName(name string) *Error {
	switch {
	case name == "":
		return errorf(Invalid, "lock name is empty")
	case len(name) > MaxNameBytes:
		return errorf(Invalid, "lock name is %d bytes, more than the limit of %d", len(name), MaxNameBytes)
	case !utf8.ValidString(name):
		return errorf(Invalid, "lock name %q is not valid UTF-8", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "" {
			return errorf(Invalid, "lock name %q has an empty segment (leading, trailing or double \"/\")", name)
		}
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return errorf(Invalid, "lock name %q contains a control character", name)
		}
	}
	return nil
}

// Namespace is the first segment of a lock name, the unit of quotas.
func Namespace(name string) string {
	ns, _, _ := strings.Cut(name, "/")
	return ns
}
