package server

import (
	"sync"
	"time"
)

// pushThrottle bounds the full pushes in flight. A full push (a proxy's first
// request, or a new subscription) takes a slot before its response is made; the slot
// is freed when the proxy's next request for that type shows it received the
// response (ACK or NACK), when its stream closes, or after a timeout. Pushes caused by
// configuration changes never wait: they are small with delta xDS and must not queue
// behind a reconnecting fleet. Without the bound, 500 proxies reconnecting at once
// hold 500 full configurations in send buffers.
//
// A nil *pushThrottle does not throttle.
type pushThrottle struct {
	slots   chan struct{}
	timeout time.Duration

	mu        sync.Mutex
	byRequest map[any]*pushSlot         // made, not yet handed to the stream
	bySent    map[sentKey]*pushSlot     // sent, waiting for the proxy's next request
	byStream  map[streamKey][]*pushSlot // to free everything when a stream closes
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
		slots:     make(chan struct{}, size),
		timeout:   timeout,
		byRequest: map[any]*pushSlot{},
		bySent:    map[sentKey]*pushSlot{},
		byStream:  map[streamKey][]*pushSlot{},
	}
}

// acquire waits for a slot for the response to req.
func (t *pushThrottle) acquire(req any) *pushSlot {
	if t == nil {
		return nil
	}
	t.slots <- struct{}{}
	s := &pushSlot{}
	s.free = func() {
		<-t.slots
		t.mu.Lock()
		delete(t.byRequest, req)
		t.mu.Unlock()
	}
	s.timeout = time.AfterFunc(t.timeout, s.release)
	t.mu.Lock()
	t.byRequest[req] = s
	t.mu.Unlock()
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
		defer old.release()
	}
	t.bySent[k] = s
	t.byStream[k.stream] = append(t.byStream[k.stream], s)
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

// closed frees every slot of a stream.
func (t *pushThrottle) closed(stream streamKey) {
	if t == nil {
		return
	}
	t.mu.Lock()
	slots := t.byStream[stream]
	delete(t.byStream, stream)
	for k := range t.bySent {
		if k.stream == stream {
			delete(t.bySent, k)
		}
	}
	t.mu.Unlock()
	for _, s := range slots {
		s.release()
	}
}
