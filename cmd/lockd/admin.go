package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// emit prints an API message: its protojson form for --output json, or the
// text rendering.
func emit(w io.Writer, output string, msg proto.Message, text func(io.Writer)) error {
	if output == "json" {
		b, err := protojson.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	text(tw)
	return tw.Flush()
}

func statusCmd(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("status", "status [flags]", stderr)
	cf.register(fs)
	pos, _, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{fmt.Errorf("unexpected argument %q", pos[0])}
	}
	c, ctx, done, err := cf.oneShot()
	if err != nil {
		return err
	}
	defer done()
	st, err := c.Status(ctx)
	if err != nil {
		return describeErr(err)
	}
	return emit(stdout, cf.output, st, func(w io.Writer) {
		leader := st.GetLeader()
		if leader == "" {
			leader = "(none)"
		}
		fmt.Fprintf(w, "node\t%s (%s)\nleader\t%s\nterm\t%d\ncommit index\t%d\napplied index\t%d\n\n",
			st.GetName(), st.GetState(), leader, st.GetTerm(), st.GetCommitIndex(), st.GetAppliedIndex())
		fmt.Fprintln(w, "MEMBER\tURL\tROLE\tMATCH\tREPLICATION")
		for _, m := range st.GetMembers() {
			role := "voter"
			if m.GetLearner() {
				role = "learner"
			}
			if m.GetName() == st.GetLeader() {
				role = "leader"
			}
			match, repl := "-", "-"
			if p := m.GetProgress(); p != nil {
				match, repl = strconv.FormatUint(p.GetMatchIndex(), 10), p.GetState()
				if !p.GetRecentActive() {
					repl += " (inactive)"
				}
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.GetName(), m.GetUrl(), role, match, repl)
		}
	})
}

func locksCmd(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	var limit uint
	fs := newFlagSet("locks", "locks list [PREFIX] | locks describe NAME", stderr)
	cf.register(fs)
	fs.UintVar(&limit, "limit", 0, "list at most this many locks (0 = all)")
	pos, _, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 || (pos[0] == "describe" && len(pos) != 2) || (pos[0] == "list" && len(pos) > 2) || (pos[0] != "list" && pos[0] != "describe") {
		return usageError{errors.New("usage: lockd locks list [PREFIX] | lockd locks describe NAME")}
	}
	c, ctx, done, err := cf.oneShot()
	if err != nil {
		return err
	}
	defer done()
	if pos[0] == "describe" {
		d, err := c.Describe(ctx, pos[1])
		if err != nil {
			return describeErr(err)
		}
		return emit(stdout, cf.output, d, func(w io.Writer) { describeText(w, d) })
	}
	prefix := ""
	if len(pos) == 2 {
		prefix = pos[1]
	}
	all := &lockdv1.ListResponse{}
	token := ""
	for {
		page, next, err := c.List(ctx, prefix, token, 1000)
		if err != nil {
			return describeErr(err)
		}
		all.Locks = append(all.Locks, page...)
		if next == "" || (limit > 0 && len(all.Locks) >= int(limit)) {
			break
		}
		token = next
	}
	if limit > 0 && len(all.Locks) > int(limit) {
		all.Locks = all.Locks[:limit]
	}
	return emit(stdout, cf.output, all, func(w io.Writer) {
		fmt.Fprintln(w, "LOCK\tHOLDERS\tTOKENS\tWAITERS\tDELAYED UNTIL")
		for _, d := range all.GetLocks() {
			var tokens []string
			for _, h := range d.GetHolders() {
				tokens = append(tokens, strconv.FormatUint(h.GetToken(), 10))
			}
			delayed := "-"
			if d.GetDelayedUntil() != nil {
				delayed = d.GetDelayedUntil().AsTime().Local().Format(time.DateTime)
			}
			fmt.Fprintf(w, "%s\t%d/%d\t%s\t%d\t%s\n", d.GetName(), len(d.GetHolders()), d.GetCapacity(), strings.Join(tokens, ","), len(d.GetWaiters()), delayed)
		}
	})
}

func describeText(w io.Writer, d *lockdv1.DescribeResponse) {
	fmt.Fprintf(w, "lock\t%s\ncapacity\t%d\nrevision\t%d\n", d.GetName(), d.GetCapacity(), d.GetRevision())
	if d.GetLockDelay() != nil {
		fmt.Fprintf(w, "lock delay\t%v\n", d.GetLockDelay().AsDuration())
	}
	if d.GetDelayedUntil() != nil {
		fmt.Fprintf(w, "delayed until\t%s (%s)\n", d.GetDelayedUntil().AsTime().Local().Format(time.DateTime), d.GetDelayReason())
	}
	fmt.Fprintln(w, "\nHOLDER LEASE\tTOKEN\tMODE\tOWNER")
	for _, h := range d.GetHolders() {
		fmt.Fprintf(w, "%d\t%d\t%s\t%s\n", h.GetLeaseId(), h.GetToken(), modeText(h.GetMode()), h.GetOwner())
	}
	fmt.Fprintln(w, "\nPOSITION\tWAITER LEASE\tQUEUED AT\tMODE\tOWNER")
	for i, wt := range d.GetWaiters() {
		fmt.Fprintf(w, "%d\t%d\t%d\t%s\t%s\n", i+1, wt.GetLeaseId(), wt.GetQueuedRevision(), modeText(wt.GetMode()), wt.GetOwner())
	}
}

func modeText(m lockdv1.Mode) string {
	switch m {
	case lockdv1.Mode_MODE_SHARED:
		return "shared"
	case lockdv1.Mode_MODE_EXCLUSIVE:
		return "exclusive"
	default:
		return "-"
	}
}

func leaseCmd(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("lease", "lease list | lease revoke ID", stderr)
	cf.register(fs)
	pos, _, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 || (pos[0] == "list" && len(pos) != 1) || (pos[0] == "revoke" && len(pos) != 2) || (pos[0] != "list" && pos[0] != "revoke") {
		return usageError{errors.New("usage: lockd lease list | lockd lease revoke ID")}
	}
	c, ctx, done, err := cf.oneShot()
	if err != nil {
		return err
	}
	defer done()
	if pos[0] == "revoke" {
		id, err := strconv.ParseUint(pos[1], 10, 64)
		if err != nil || id == 0 {
			return usageError{fmt.Errorf("lease id %q is not a positive number", pos[1])}
		}
		if err := c.Revoke(ctx, id); err != nil {
			return describeErr(err)
		}
		if cf.output == "json" {
			return printJSON(stdout, map[string]any{"revoked": strconv.FormatUint(id, 10)})
		}
		fmt.Fprintf(stdout, "revoked lease %d\n", id)
		return nil
	}
	all := &lockdv1.ListLeasesResponse{}
	token := ""
	for {
		page, next, err := c.Leases(ctx, token, 1000)
		if err != nil {
			return describeErr(err)
		}
		all.Leases = append(all.Leases, page...)
		if next == "" {
			break
		}
		token = next
	}
	return emit(stdout, cf.output, all, func(w io.Writer) {
		fmt.Fprintln(w, "LEASE\tTTL\tOWNER\tHOLDS\tWAITS FOR")
		for _, l := range all.GetLeases() {
			var held []string
			for _, g := range l.GetHeld() {
				held = append(held, fmt.Sprintf("%s@%d", g.GetName(), g.GetToken()))
			}
			fmt.Fprintf(w, "%d\t%v\t%s\t%s\t%s\n", l.GetId(), l.GetTtl().AsDuration(), l.GetOwner(), strings.Join(held, ","), strings.Join(l.GetWaiting(), ","))
		}
	})
}
