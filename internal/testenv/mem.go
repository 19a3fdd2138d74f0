package testenv

import "runtime"

// HeapAfterGC returns the bytes of live heap objects after two collections
// (the second frees what the first's finalizers released): what a
// structure holds is the difference of two calls around building it.
func HeapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
