package locks

import (
	"bytes"
	"strings"
	"testing"
	"time"

	statev1 "github.com/lockd-io/lockd/proto/lockd/state/v1"
)

// overflowMs is a millisecond count whose conversion to nanoseconds wraps
// int64 around to exactly one second (2^58 * 10^6 is a multiple of 2^64).
const overflowMs = 1<<58 + 1000

// TestBadInputs applies every kind of bad command to a table with state in
// it: each fails with the right code and leaves the table byte-identical.
func TestBadInputs(t *testing.T) {
	type fixture struct {
		a, b    uint64 // leases; a holds "held" (token tok) and "sem" (capacity 3), b waits for "held"; "delayed" is in a delay
		tok, wb uint64
		names65 []string
	}
	prepare := func(t *testing.T) (*harness, *fixture) {
		h := newHarness(t)
		f := &fixture{a: h.lease(), b: h.lease()}
		f.tok = h.hold(f.a, "held")
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: f.a, Names: []string{"sem"}, Capacity: 3})))
		f.wb = h.queue(f.b, "held")
		c := h.lease()
		h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: c, Names: []string{"delayed"}, LockDelayMs: 1000})))
		h.ok(h.apply(cmdExpire(c, h.term))) // "delayed" is empty, in a delay
		for i := range MaxLocksPerAcquire + 1 {
			f.names65 = append(f.names65, "n/"+itoa(i))
		}
		return h, f
	}
	acq := func(lease uint64, names ...string) *statev1.Command { return cmdAcq(lease, names...) }
	acqWith := func(a *statev1.Acquire) *statev1.Command { return cmdAcquire(a) }

	cases := []struct {
		name string
		cmd  func(f *fixture) *statev1.Command
		raw  []byte // instead of cmd
		code Code
	}{
		// Undecodable and empty commands.
		{name: "garbage bytes", raw: []byte{0xff, 0xff, 0xff}, code: Invalid},
		{name: "truncated varint", raw: []byte{0x08}, code: Invalid},
		{name: "no op", cmd: func(f *fixture) *statev1.Command { return &statev1.Command{ProposedUnixNano: 5} }, code: Invalid},

		// Lease grants.
		{name: "TTL 0", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(0) }, code: Invalid},
		{name: "TTL negative", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(-1000) }, code: Invalid},
		{name: "TTL above MaxTTL", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(MaxTTL.Milliseconds() + 1) }, code: Invalid},
		{name: "TTL that overflows to 1s", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(overflowMs) }, code: Invalid},
		{name: "negative TTL that overflows to 1s", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(-(1 << 58) + 1000) }, code: Invalid},
		{name: "TTL max int64", cmd: func(f *fixture) *statev1.Command { return cmdGrantMs(1<<63 - 1) }, code: Invalid},
		{name: "owner too long", cmd: func(f *fixture) *statev1.Command { return cmdGrant(time.Second, strings.Repeat("o", MaxOwnerBytes+1)) }, code: Invalid},

		// Lease ends.
		{name: "revoke unknown lease", cmd: func(f *fixture) *statev1.Command { return cmdRevoke(999) }, code: NotFound},
		{name: "revoke lease 0", cmd: func(f *fixture) *statev1.Command { return cmdRevoke(0) }, code: NotFound},
		{name: "expire unknown lease", cmd: func(f *fixture) *statev1.Command { return cmdExpire(999, 1) }, code: NotFound},

		// Acquire: names.
		{name: "no names", cmd: func(f *fixture) *statev1.Command { return acq(f.a) }, code: Invalid},
		{name: "empty name", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "") }, code: Invalid},
		{name: "name of 513 bytes", cmd: func(f *fixture) *statev1.Command { return acq(f.a, strings.Repeat("x", MaxNameBytes+1)) }, code: Invalid},
		// Protobuf refuses invalid UTF-8 in string fields, so such a name
		// arrives as an undecodable command: still Invalid.
		{name: "invalid UTF-8", raw: spliced(cmdAcq(1, "bad?name"), "bad?name", "bad\xffname"), code: Invalid},
		{name: "truncated UTF-8", raw: spliced(cmdAcq(1, "caf?"), "caf?", "caf\xc3"), code: Invalid},
		{name: "invalid UTF-8 in a release", raw: spliced(cmdRelease(1, "held?", 0), "held?", "held\xff"), code: Invalid},
		{name: "invalid UTF-8 owner", raw: spliced(cmdGrant(time.Second, "own?"), "own?", "own\xfe"), code: Invalid},
		{name: "empty segment", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a//b") }, code: Invalid},
		{name: "leading slash", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "/a") }, code: Invalid},
		{name: "trailing slash", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a/") }, code: Invalid},
		{name: "only a slash", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "/") }, code: Invalid},
		{name: "NUL", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a\x00b") }, code: Invalid},
		{name: "tab", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a\tb") }, code: Invalid},
		{name: "newline", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a\n") }, code: Invalid},
		{name: "DEL", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a\x7f") }, code: Invalid},
		{name: "C1 control", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "a\u0085b") }, code: Invalid},
		{name: "bad name among good ones", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "ok1", "ok2", "x//y") }, code: Invalid},
		{name: "too many names", cmd: func(f *fixture) *statev1.Command { return acq(f.a, f.names65...) }, code: Invalid},
		{name: "duplicate name", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "d1", "d2", "d1") }, code: Invalid},

		// Acquire: other fields.
		{name: "mode 3", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, Mode: 3})
		}, code: Invalid},
		{name: "mode -1", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, Mode: -1})
		}, code: Invalid},
		{name: "capacity above the limit", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, Capacity: MaxCapacity + 1})
		}, code: Invalid},
		{name: "negative lock delay", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, LockDelayMs: -1})
		}, code: Invalid},
		{name: "lock delay above the limit", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, LockDelayMs: MaxLockDelay.Milliseconds() + 1})
		}, code: Invalid},
		{name: "lock delay that overflows to 1s", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, LockDelayMs: overflowMs})
		}, code: Invalid},
		{name: "negative lock delay that overflows to 1s", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, LockDelayMs: -(1 << 58) + 1000})
		}, code: Invalid},
		{name: "value too big", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.a, Names: []string{"m"}, Value: make([]byte, MaxValueBytes+1)})
		}, code: Invalid},
		{name: "acquire by unknown lease", cmd: func(f *fixture) *statev1.Command { return acq(999, "m") }, code: NotFound},
		{name: "acquire by lease 0", cmd: func(f *fixture) *statev1.Command { return acq(0, "m") }, code: NotFound},
		{name: "unknown lease wins over bad name", cmd: func(f *fixture) *statev1.Command { return acq(999, "") }, code: NotFound},
		{name: "capacity conflict", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.b, Names: []string{"sem"}, Capacity: 4})
		}, code: Conflict},
		{name: "capacity conflict in a multi-lock", cmd: func(f *fixture) *statev1.Command {
			return acqWith(&statev1.Acquire{LeaseId: f.b, Names: []string{"fresh", "sem"}, Capacity: 2, Mode: int32(ModeExclusive)})
		}, code: Conflict},
		{name: "semaphore acquired as a mutex", cmd: func(f *fixture) *statev1.Command { return acq(f.b, "sem") }, code: Conflict},
		{name: "partly held", cmd: func(f *fixture) *statev1.Command { return acq(f.a, "held", "other") }, code: Conflict},
		{name: "already waits for it in another request", cmd: func(f *fixture) *statev1.Command { return acq(f.b, "held", "other") }, code: Conflict},

		// Release.
		{name: "release by non-holder", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.b, "held", 0) }, code: NotHolder},
		{name: "release by waiter with holder's token", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.b, "held", f.tok) }, code: NotHolder},
		{name: "release with stale token", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.a, "held", f.tok-1) }, code: NotHolder},
		{name: "release with future token", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.a, "held", f.tok+1000) }, code: NotHolder},
		{name: "release of unknown lock", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.a, "nosuch", 0) }, code: NotHolder},
		{name: "release with bad name", cmd: func(f *fixture) *statev1.Command { return cmdRelease(f.a, "", 0) }, code: NotHolder},
		{name: "release by unknown lease", cmd: func(f *fixture) *statev1.Command { return cmdRelease(999, "held", f.tok) }, code: NotFound},

		// SetValue.
		{name: "set value by non-holder", cmd: func(f *fixture) *statev1.Command { return cmdSetValue(f.b, "held", f.tok, "x") }, code: NotHolder},
		{name: "set value with stale token", cmd: func(f *fixture) *statev1.Command { return cmdSetValue(f.a, "held", f.tok-1, "x") }, code: NotHolder},
		{name: "set value too big", cmd: func(f *fixture) *statev1.Command {
			return cmdSetValue(f.a, "held", f.tok, strings.Repeat("v", MaxValueBytes+1))
		}, code: Invalid},
		{name: "set value by unknown lease", cmd: func(f *fixture) *statev1.Command { return cmdSetValue(999, "held", f.tok, "x") }, code: NotFound},

		// Cancel.
		{name: "cancel by unknown lease", cmd: func(f *fixture) *statev1.Command { return cmdCancel(999, f.wb) }, code: NotFound},

		// ForceRelease.
		{name: "force release without reason", cmd: func(f *fixture) *statev1.Command { return cmdForce("held", f.tok, "") }, code: Invalid},
		{name: "force release with blank reason", cmd: func(f *fixture) *statev1.Command { return cmdForce("held", f.tok, " \t ") }, code: Invalid},
		{name: "force release with long reason", cmd: func(f *fixture) *statev1.Command {
			return cmdForce("held", f.tok, strings.Repeat("r", MaxReasonBytes+1))
		}, code: Invalid},
		{name: "force release of a free lock", cmd: func(f *fixture) *statev1.Command { return cmdForce("nosuch", 0, "why") }, code: NotHolder},
		{name: "force release with a wrong token", cmd: func(f *fixture) *statev1.Command { return cmdForce("held", f.tok+1, "why") }, code: NotHolder},
		{name: "force release of a delayed lock nobody holds", cmd: func(f *fixture) *statev1.Command { return cmdForce("delayed", 0, "why") }, code: NotHolder},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, f := prepare(t)
			data := tc.raw
			if data == nil {
				c := tc.cmd(f)
				if c.GetProposedUnixNano() == 0 {
					c.ProposedUnixNano = h.now
				}
				data = encode(c)
			}
			h.unchanged(tc.name, func() {
				res := h.raw(data)
				if res == nil {
					t.Fatal("nil result")
				}
				h.fails(res, tc.code)
				if res.Granted || res.Tokens != nil || res.Duplicate || res.Ignored {
					t.Fatalf("failed result carries more: %+v", res)
				}
			})
			if err := checkInvariants(h.tab); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// spliced encodes c and replaces the bytes of placeholder, which must occur
// once, by replacement of the same length: a way to put bytes on the wire
// that proto.Marshal refuses to write.
func spliced(c *statev1.Command, placeholder, replacement string) []byte {
	if len(placeholder) != len(replacement) {
		panic("spliced: lengths differ")
	}
	b := encode(c)
	if bytes.Count(b, []byte(placeholder)) != 1 {
		panic("spliced: placeholder not found once")
	}
	return bytes.Replace(b, []byte(placeholder), []byte(replacement), 1)
}

// TestGoodInputsAtTheLimits checks the boundaries of TestBadInputs from the
// other side.
func TestGoodInputsAtTheLimits(t *testing.T) {
	h := newHarness(t)
	h.ok(h.apply(cmdGrantMs(1)))
	h.ok(h.apply(cmdGrantMs(MaxTTL.Milliseconds())))
	a := h.lease()
	var names []string
	for i := range MaxLocksPerAcquire {
		names = append(names, "lim/"+itoa(i))
	}
	names[0] = strings.Repeat("n", MaxNameBytes)
	names[1] = "ünïcødé/名前/🔒"
	names[2] = "a/b/c/d/e/f"
	names[3] = "with space/and-dash_and.dot"
	names[4] = "zero\u200bwidth" // a format character, not a control character
	res := h.ok(h.apply(cmdAcquire(&statev1.Acquire{LeaseId: a, Names: names, Value: make([]byte, MaxValueBytes),
		LockDelayMs: MaxLockDelay.Milliseconds(), Capacity: MaxCapacity, Mode: int32(ModeShared)})))
	if !res.Granted || len(res.Tokens) != MaxLocksPerAcquire {
		t.Fatalf("%+v", res)
	}
	if info, _, _ := h.tab.Describe(names[0]); info.Capacity != MaxCapacity || info.Delay != MaxLockDelay {
		t.Fatalf("%+v", info)
	}
	h.ok(h.apply(cmdForce(names[1], 0, strings.Repeat("r", MaxReasonBytes))))
}

func TestValidateName(t *testing.T) {
	cases := []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"a/b", true},
		{"jobs/nightly/report", true},
		{strings.Repeat("x", MaxNameBytes), true},
		{strings.Repeat("é", MaxNameBytes/2), true},
		{"日本/語", true},
		{" ", true},
		{"", false},
		{strings.Repeat("x", MaxNameBytes+1), false},
		{strings.Repeat("é", MaxNameBytes/2) + "x", false},
		{"\xff", false},
		{"a\xc3", false},
		{"a//b", false},
		{"/a", false},
		{"a/", false},
		{"/", false},
		{"//", false},
		{"a\x00", false},
		{"\x1f", false},
		{"a\x7f", false},
		{"\u009f", false},
	}
	for _, tc := range cases {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil {
			if e, isErr := err.(*Error); !isErr || e.Code != Invalid {
				t.Errorf("ValidateName(%q) = %#v, want an *Error with code Invalid", tc.name, err)
			}
		}
	}
}

func TestCodeStrings(t *testing.T) {
	for c, want := range map[Code]string{OK: "ok", Invalid: "invalid", NotFound: "not found", NotHolder: "not holder", Conflict: "conflict", Quota: "quota", Aborted: "aborted", Denied: "denied", 42: "code(42)"} {
		if got := c.String(); got != want {
			t.Errorf("Code(%d).String() = %q, want %q", int32(c), got, want)
		}
	}
	for typ := LeaseGranted; typ <= ValueSet; typ++ {
		if s := typ.String(); s == "unknown" || s == "" {
			t.Errorf("EventType(%d) has no name", typ)
		}
	}
	if EventType(0).String() != "unknown" {
		t.Error("EventType(0) has a name")
	}
}
