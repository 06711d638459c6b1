package txn

import (
	"container/list"
	"sort"
)

// cache keeps recently used metadata blocks within a bound. Dirty blocks
// are fresh ones (unreachable from the committed superblock), so evicting
// one just writes it out early.
type cache struct {
	limit     int
	entries   map[uint64]*list.Element
	lru       *list.List // front: most recent
	writeBack func(b uint64, data []byte) error
}

type cacheEntry struct {
	b     uint64
	data  []byte
	dirty bool
	// verified is set once the content's checksum was checked (or the
	// block was written here), so cache hits skip the check.
	verified bool
}

func newCache(limit int, writeBack func(uint64, []byte) error) *cache {
	if limit < 16 {
		limit = 16
	}
	return &cache{limit: limit, entries: map[uint64]*list.Element{}, lru: list.New(), writeBack: writeBack}
}

func (c *cache) get(b uint64) (*cacheEntry, bool) {
	e, ok := c.entries[b]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*cacheEntry), true
}

func (c *cache) put(b uint64, data []byte, dirty bool) error {
	if e, ok := c.entries[b]; ok {
		ent := e.Value.(*cacheEntry)
		ent.data = data
		ent.dirty = ent.dirty || dirty
		ent.verified = dirty
		c.lru.MoveToFront(e)
		return nil
	}
	c.entries[b] = c.lru.PushFront(&cacheEntry{b: b, data: data, dirty: dirty, verified: dirty})
	for c.lru.Len() > c.limit {
		last := c.lru.Back()
		ent := last.Value.(*cacheEntry)
		if ent.dirty {
			if err := c.writeBack(ent.b, ent.data); err != nil {
				return err
			}
		}
		c.lru.Remove(last)
		delete(c.entries, ent.b)
	}
	return nil
}

func (c *cache) drop(b uint64) {
	if e, ok := c.entries[b]; ok {
		c.lru.Remove(e)
		delete(c.entries, b)
	}
}

// flush writes every dirty block, in block order, calling mid once
// half-way (a crash point).
func (c *cache) flush(mid func() error) error {
	var dirty []*cacheEntry
	for _, e := range c.entries {
		if ent := e.Value.(*cacheEntry); ent.dirty {
			dirty = append(dirty, ent)
		}
	}
	sort.Slice(dirty, func(i, j int) bool { return dirty[i].b < dirty[j].b })
	for i, ent := range dirty {
		if i == len(dirty)/2 {
			if err := mid(); err != nil {
				return err
			}
		}
		if err := c.writeBack(ent.b, ent.data); err != nil {
			return err
		}
		ent.dirty = false
	}
	return nil
}
