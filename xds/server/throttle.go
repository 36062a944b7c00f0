package server

import (
	"sync"
	"time"
)

// pushThrottle bounds the full pushes in flight. A full push (a proxy's first
// request, or a new subscription) waits for a slot before its response is made; the
// slot is freed when the proxy's next request for that type shows it received the
// response (ACK or NACK), when its stream closes, or after a timeout. Waiting never
// blocks a stream: the watch stays open and is answered when a slot frees. Pushes
// caused by configuration changes never wait: they are small with delta xDS and must
// not queue behind a reconnecting fleet. Without the bound, 500 proxies connecting at
// once hold 500 full configurations in send buffers.
//
// A nil *pushThrottle does not throttle.
type pushThrottle struct {
	timeout time.Duration

	mu        sync.Mutex
	free      int
	waiting   []waiter
	byRequest map[any]*pushSlot     // made, not yet handed to the stream
	bySent    map[sentKey]*pushSlot // sent, waiting for the proxy's next request
}

type waiter struct {
	req any
	fn  func(*pushSlot)
}

type sentKey struct {
	stream  streamKey
	typeURL string
}

// pushSlot is one slot taken; release is idempotent and nil-safe.
type pushSlot struct {
	once    sync.Once
	free    func()
	timeout *time.Timer
}

func newPushThrottle(size int, timeout time.Duration) *pushThrottle {
	if size <= 0 {
		return nil
	}
	return &pushThrottle{
		free:      size,
		timeout:   timeout,
		byRequest: map[any]*pushSlot{},
		bySent:    map[sentKey]*pushSlot{},
	}
}

// do runs fn with a slot for the response to req: now if one is free, otherwise when
// one is released. fn must release the slot if it sends nothing.
func (t *pushThrottle) do(req any, fn func(*pushSlot)) {
	if t == nil {
		fn(nil)
		return
	}
	t.mu.Lock()
	if t.free == 0 {
		t.waiting = append(t.waiting, waiter{req, fn})
		t.mu.Unlock()
		return
	}
	t.free--
	s := t.slotLocked(req)
	t.mu.Unlock()
	fn(s)
}

// slotLocked makes a slot for req; t.mu is held.
func (t *pushThrottle) slotLocked(req any) *pushSlot {
	s := &pushSlot{}
	s.free = func() {
		t.mu.Lock()
		if t.byRequest[req] == s {
			delete(t.byRequest, req)
		}
		if len(t.waiting) == 0 {
			t.free++
			t.mu.Unlock()
			return
		}
		next := t.waiting[0]
		t.waiting[0] = waiter{} // the backing array must not keep the request alive
		t.waiting = t.waiting[1:]
		ns := t.slotLocked(next.req)
		t.mu.Unlock()
		go next.fn(ns) // not on the releasing goroutine, which may hold locks
	}
	s.timeout = time.AfterFunc(t.timeout, s.release)
	t.byRequest[req] = s
	return s
}

func (s *pushSlot) release() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		s.timeout.Stop()
		s.free()
	})
}

// sent records that the response to req went out on a stream.
func (t *pushThrottle) sent(req any, k sentKey) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.byRequest[req]
	if s == nil {
		return
	}
	delete(t.byRequest, req)
	if old := t.bySent[k]; old != nil {
		defer old.release() // after t.mu is unlocked
	}
	t.bySent[k] = s
}

// received frees the slot of the last response of a type on a stream.
func (t *pushThrottle) received(k sentKey) {
	if t == nil {
		return
	}
	t.mu.Lock()
	s := t.bySent[k]
	delete(t.bySent, k)
	t.mu.Unlock()
	s.release()
}

// closed frees every slot of a stream. Slots of responses it never sent are freed
// by their timeout.
func (t *pushThrottle) closed(stream streamKey) {
	if t == nil {
		return
	}
	var slots []*pushSlot
	t.mu.Lock()
	for k, s := range t.bySent {
		if k.stream == stream {
			slots = append(slots, s)
			delete(t.bySent, k)
		}
	}
	t.mu.Unlock()
	for _, s := range slots {
		s.release()
	}
}
