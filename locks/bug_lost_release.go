//go:build lockd_bug_lost_release

package locks

// bugLostRelease answers the release of an exclusive hold with success but,
// at every third revision, leaves the holder in place. The revision decides,
// so every replica loses the same releases.
const bugLostRelease = true
