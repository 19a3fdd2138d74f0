package devices

import (
	"hash/maphash"
	"slices"
)

// shardedMap is an immutable map from string keys, split by hash into
// fanout×fanout small slices under a two-level tree of fixed arrays. A write
// (with) copies the root array, one node and one slice, so it costs
// O(n/fanout² + fanout) instead of the O(n) of copying one big map; at
// 100,000 keys a slice holds ~25 entries.
//
// A read is one hash, two array indexings and a binary search on the stored
// hashes, with no lock and no allocation. The slices hold each entry's full
// hash so that the search touches the key's bytes only on a hash match: small
// Go maps compare keys slot by slot, a cache miss each, which made a lookup
// in 4,096 small maps several times slower than in one big map.
//
// An entry holds no key: K reads it from the value (a device's id from its
// record), which saves 16 bytes per device at fleet scale.
type shardedMap[V any, K keyOf[V]] struct {
	nodes [fanout]*[fanout][]shardEntry[V]
}

// keyOf reads a value's key.
type keyOf[V any] interface{ key(V) string }

type shardEntry[V any] struct {
	hash uint64
	val  V
}

const fanout = 64 // 64×64 = 4,096 slices

var shardSeed = maphash.MakeSeed()

// locate hashes key and returns its node and slice indexes (top 12 bits).
func locate(key string) (h uint64, i, j int) {
	h = maphash.String(shardSeed, key)
	return h, int(h >> 58), int(h >> 52 & (fanout - 1))
}

// search returns the index of key in es (sorted by hash), or where to insert
// it.
func search[V any, K keyOf[V]](es []shardEntry[V], h uint64, key string) (int, bool) {
	var k K
	lo, hi := 0, len(es)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if es[mid].hash < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	for i := lo; i < len(es) && es[i].hash == h; i++ {
		if k.key(es[i].val) == key {
			return i, true
		}
	}
	return lo, false
}

func (m *shardedMap[V, K]) get(key string) (V, bool) {
	h, i, j := locate(key)
	if node := m.nodes[i]; node != nil {
		es := node[j]
		if k, ok := search[V, K](es, h, key); ok {
			return es[k].val, true
		}
	}
	var zero V
	return zero, false
}

// with returns a copy of m with key set to v (whose key it is) or, when del
// is true, removed.
// m itself is not modified.
func (m *shardedMap[V, K]) with(key string, v V, del bool) shardedMap[V, K] {
	h, i, j := locate(key)
	out := *m
	node := new([fanout][]shardEntry[V])
	if m.nodes[i] != nil {
		*node = *m.nodes[i]
	}
	es := node[j]
	k, found := search[V, K](es, h, key)
	switch {
	case del && found:
		es = slices.Concat(es[:k], es[k+1:])
	case del:
		return out
	case found:
		es = slices.Clone(es)
		es[k].val = v
	default:
		es = slices.Concat(es[:k], []shardEntry[V]{{hash: h, val: v}}, es[k:])
	}
	if len(es) == 0 {
		es = nil
	}
	node[j] = es
	out.nodes[i] = node
	return out
}

// set adds or replaces key (v's) in place. Only for a map not yet published.
func (m *shardedMap[V, K]) set(key string, v V) {
	h, i, j := locate(key)
	if m.nodes[i] == nil {
		m.nodes[i] = new([fanout][]shardEntry[V])
	}
	es := m.nodes[i][j]
	if k, found := search[V, K](es, h, key); found {
		es[k].val = v
	} else {
		m.nodes[i][j] = slices.Insert(es, k, shardEntry[V]{hash: h, val: v})
	}
}

// compact copies every slice to its exact size, giving back the spare
// capacity that set's appends left. Only for a map not yet published.
func (m *shardedMap[V, K]) compact() {
	for _, node := range m.nodes {
		if node != nil {
			for j, es := range node {
				if cap(es) > len(es) {
					node[j] = slices.Clone(es)
				}
			}
		}
	}
}

// all yields every entry, in no particular order.
func (m *shardedMap[V, K]) all(yield func(string, V) bool) {
	var k K
	for _, node := range m.nodes {
		if node == nil {
			continue
		}
		for _, es := range node {
			for _, e := range es {
				if !yield(k.key(e.val), e.val) {
					return
				}
			}
		}
	}
}
