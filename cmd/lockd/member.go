package main

import (
	"errors"
	"fmt"
	"io"

	lockd "github.com/lockd-io/lockd/clients/go"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// memberCmd changes and lists the cluster's members:
//
//	lockd member add NAME --peer-url URL [--learner]
//	lockd member promote NAME
//	lockd member remove NAME
//	lockd member list
//	lockd member transfer [NAME]
func memberCmd(args []string, stdout, stderr io.Writer) error {
	var cf clientFlags
	fs := newFlagSet("member", "member add NAME --peer-url URL [--learner] | promote NAME | remove NAME | list | transfer [NAME]", stderr)
	cf.register(fs)
	peerURL := fs.String("peer-url", "", "add: the URL peers and clients reach the new member at")
	learner := fs.Bool("learner", false, "add: as a learner (it receives the log without voting); promote it once it has caught up")
	pos, _, err := cf.parse(fs, args)
	if err != nil {
		return err
	}
	usage := usageError{errors.New("usage: lockd member add NAME --peer-url URL [--learner] | member promote NAME | member remove NAME | member list | member transfer [NAME]")}
	if len(pos) == 0 {
		return usage
	}
	switch {
	case pos[0] == "list" && len(pos) == 1:
	case pos[0] == "transfer" && len(pos) <= 2:
	case (pos[0] == "add" || pos[0] == "promote" || pos[0] == "remove") && len(pos) == 2:
	default:
		return usage
	}
	if pos[0] == "add" && *peerURL == "" {
		return usageError{errors.New("member add needs --peer-url")}
	}
	c, ctx, done, err := cf.oneShot()
	if err != nil {
		return err
	}
	defer done()
	if pos[0] == "transfer" {
		name := ""
		if len(pos) == 2 {
			name = pos[1]
		}
		leader, err := c.TransferLeader(ctx, name)
		if err != nil {
			return describeErr(err)
		}
		return emit(stdout, cf.output, &lockdv1.TransferLeaderResponse{Leader: leader}, func(w io.Writer) {
			fmt.Fprintf(w, "leader: %s\n", leader)
		})
	}
	var members []*lockdv1.Member
	switch pos[0] {
	case "list":
		st, err := c.Status(ctx)
		if err != nil {
			return describeErr(err)
		}
		// The leader's view: a member that has just joined may not have
		// learned the others yet.
		if st.GetState() != "leader" && st.GetLeaderUrl() != "" {
			if lc, err := lockd.New([]string{st.GetLeaderUrl()}); err == nil {
				if lst, err := lc.Status(ctx); err == nil {
					st = lst
				}
				lc.Close()
			}
		}
		members = st.GetMembers()
	case "add":
		members, err = c.AddMember(ctx, pos[1], *peerURL, *learner)
	case "promote":
		members, err = c.PromoteMember(ctx, pos[1])
	case "remove":
		members, err = c.RemoveMember(ctx, pos[1])
	}
	if err != nil {
		return describeErr(err)
	}
	return emit(stdout, cf.output, &lockdv1.MembersResponse{Members: members}, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tID\tURL\tROLE")
		for _, m := range members {
			role := "voter"
			if m.GetLearner() {
				role = "learner"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", m.GetName(), m.GetId(), m.GetUrl(), role)
		}
	})
}
