package main

import "sync"

// fanout delivers events from one producer (live state's status changes) to
// the consumers wired in after it was created (alerts, stream hub). Publish
// must not block: each subscriber's handler is required not to.
type fanout[T any] struct {
	mu   sync.RWMutex
	subs []func(T)
}

func newFanout[T any]() *fanout[T] { return &fanout[T]{} }

func (f *fanout[T]) Subscribe(fn func(T)) {
	f.mu.Lock()
	f.subs = append(f.subs, fn)
	f.mu.Unlock()
}

func (f *fanout[T]) Publish(ev T) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, fn := range f.subs {
		fn(ev)
	}
}
