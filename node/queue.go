package node

import "sync"

// workQueue hands work from the raft loop to a goroutine of its own (the
// appender, the applier) in order, without ever blocking the loop: the
// goroutine takes everything queued at once, so work that piles up while it
// is busy is done as one batch.
type workQueue[T any] struct {
	mu    sync.Mutex
	items []T
	wake  chan struct{} // cap 1: an item was pushed
	quit  chan struct{}
	done  chan struct{} // closed by the goroutine when it returns
	once  sync.Once

	failed chan struct{} // closed when the goroutine failed; err says why
	err    error
}

func (q *workQueue[T]) init() {
	q.wake = make(chan struct{}, 1)
	q.quit = make(chan struct{})
	q.done = make(chan struct{})
	q.failed = make(chan struct{})
}

func (q *workQueue[T]) push(item T) {
	q.mu.Lock()
	q.items = append(q.items, item)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take waits for work and returns all of it, or false once stop was called.
func (q *workQueue[T]) take() ([]T, bool) {
	select {
	case <-q.quit:
		return nil, false
	case <-q.wake:
	}
	q.mu.Lock()
	items := q.items
	q.items = nil
	q.mu.Unlock()
	return items, true
}

// fail records why the goroutine cannot go on, for the loop to see on
// failed, and waits for stop.
func (q *workQueue[T]) fail(err error) {
	q.err = err
	close(q.failed)
	<-q.quit
}

// stop ends the goroutine and waits for it; work still queued is dropped.
func (q *workQueue[T]) stop() {
	q.once.Do(func() { close(q.quit) })
	<-q.done
}
