package lockd

import (
	"context"

	"connectrpc.com/connect"
	lockdv1 "github.com/lockd-io/lockd/proto/lockd/v1"
)

// AddMember adds a member reached at peerURL, as a learner unless learner
// is false, and returns the membership after the change. Start the new node
// with `lockd serve --join` after this call.
func (c *Client) AddMember(ctx context.Context, name, peerURL string, learner bool) ([]*lockdv1.Member, error) {
	return c.changeMembers(ctx, func(ctx context.Context, e *endpoint) (*connect.Response[lockdv1.MembersResponse], error) {
		return e.cluster.AddMember(ctx, connect.NewRequest(&lockdv1.AddMemberRequest{Name: name, PeerUrl: peerURL, Learner: learner}))
	})
}

// PromoteMember makes a learner that has caught up a voter.
func (c *Client) PromoteMember(ctx context.Context, name string) ([]*lockdv1.Member, error) {
	return c.changeMembers(ctx, func(ctx context.Context, e *endpoint) (*connect.Response[lockdv1.MembersResponse], error) {
		return e.cluster.PromoteMember(ctx, connect.NewRequest(&lockdv1.PromoteMemberRequest{Name: name}))
	})
}

// RemoveMember removes a member; the removed node stops serving.
func (c *Client) RemoveMember(ctx context.Context, name string) ([]*lockdv1.Member, error) {
	return c.changeMembers(ctx, func(ctx context.Context, e *endpoint) (*connect.Response[lockdv1.MembersResponse], error) {
		return e.cluster.RemoveMember(ctx, connect.NewRequest(&lockdv1.RemoveMemberRequest{Name: name}))
	})
}

func (c *Client) changeMembers(ctx context.Context, call func(context.Context, *endpoint) (*connect.Response[lockdv1.MembersResponse], error)) ([]*lockdv1.Member, error) {
	var members []*lockdv1.Member
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := call(ctx, e)
		if err == nil {
			members = r.Msg.GetMembers()
		}
		return err
	})
	return members, err
}

// TransferLeader hands raft leadership to the voter name (to the most
// up-to-date voter if name is empty) and returns the member that leads
// once it has moved.
func (c *Client) TransferLeader(ctx context.Context, name string) (string, error) {
	var leader string
	err := c.do(ctx, func(ctx context.Context, e *endpoint) error {
		r, err := e.cluster.TransferLeader(ctx, connect.NewRequest(&lockdv1.TransferLeaderRequest{Name: name}))
		if err == nil {
			leader = r.Msg.GetLeader()
		}
		return err
	})
	if err == nil {
		c.refindLeader()
	}
	return leader, err
}
