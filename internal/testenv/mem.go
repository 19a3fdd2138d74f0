package testenv

import "runtime"

// HeapAfterGC returns the bytes of live heap objects after two collections
// (the second frees what the first's finalizers released, and empties the
// sync.Pool victim caches): what a structure holds is the difference of two
// calls around building it. It reads HeapAlloc, not HeapInuse: right after
// a collection HeapAlloc is the marked objects, while HeapInuse adds the
// free slots of the spans they sit in, which moves with fragmentation.
func HeapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
