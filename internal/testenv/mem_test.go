package testenv

import (
	"runtime"
	"testing"
)

// TestHeapAfterGC: what is kept counts in full, what was dropped not at all.
func TestHeapAfterGC(t *testing.T) {
	const size = 16 << 20
	base := HeapAfterGC()
	kept := make([]byte, size)
	kept[len(kept)-1] = 1
	withKept := HeapAfterGC()
	runtime.KeepAlive(kept) // and no further
	dropped := HeapAfterGC()
	if grown := int64(withKept) - int64(base); grown < size || grown > size+size/4 {
		t.Errorf("kept %d bytes: heap grew %d", size, grown)
	}
	if grown := int64(dropped) - int64(base); grown > size/4 {
		t.Errorf("dropped %d bytes: heap still %d above the start", size, grown)
	}
}
