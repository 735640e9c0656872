package node

import (
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

func TestMergeEntries(t *testing.T) {
	ents := func(term uint64, idx ...uint64) []*raftpb.Entry {
		var out []*raftpb.Entry
		for _, i := range idx {
			out = append(out, &raftpb.Entry{Index: new(i), Term: new(term)})
		}
		return out
	}
	ids := func(es []*raftpb.Entry) (out [][2]uint64) {
		for _, e := range es {
			out = append(out, [2]uint64{e.GetIndex(), e.GetTerm()})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		a, b []*raftpb.Entry
		want []*raftpb.Entry
	}{
		{"empty first", nil, ents(1, 5, 6), ents(1, 5, 6)},
		{"empty second", ents(1, 5, 6), nil, ents(1, 5, 6)},
		{"appended", ents(1, 5, 6), ents(1, 7, 8), ents(1, 5, 6, 7, 8)},
		{"tail replaced", ents(1, 5, 6, 7), ents(2, 6), append(ents(1, 5), ents(2, 6)...)},
		{"all replaced", ents(1, 5, 6), ents(2, 5), ents(2, 5)},
		{"replaced from before", ents(1, 5, 6), ents(2, 3, 4), ents(2, 3, 4)},
		{"gap kept for the store to refuse", ents(1, 5), ents(1, 7), ents(1, 5, 7)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := slices.Clone(tc.a)
			got := mergeEntries(tc.a, tc.b)
			if !slices.Equal(ids(got), ids(tc.want)) {
				t.Fatalf("merge = %v, want %v", ids(got), ids(tc.want))
			}
			if !slices.Equal(a, tc.a) {
				t.Fatalf("merge modified its first argument")
			}
		})
	}
}
