package ingest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ErrSpoolFull is returned by the spool when a batch does not fit in
// SpoolMaxBytes. The writer then keeps the batch (its messages stay
// unacknowledged, so the broker holds what follows) and retries.
var ErrSpoolFull = errors.New("ingest: spool full")

// The spool is a bounded FIFO of line-protocol batches on disk, for the
// time InfluxDB cannot take them. It is a directory of segment files
// (seg-<seq>.lp) of records, and a small index file holding the position
// of the oldest record not yet replayed.
//
// A record is a 16-byte header, then the batch's line protocol:
//
//	length of the lines (uint32) | messages (uint32) | points (uint32) |
//	CRC-32C of the first 12 header bytes and the lines (uint32)
//
// Append writes a record with one write and fsyncs it before it returns:
// "ack after durable". Records are only ever appended to the newest
// segment; a record torn by a crash fails its CRC and is cut off when the
// spool is opened again (its messages were never acknowledged). The index
// is replaced atomically (write, fsync, rename) after each replayed batch;
// a crash between the write to InfluxDB and the index update replays that
// batch again, which rewrites the same points: at-least-once, no
// duplicates.
type spool struct {
	dir    string
	max    int64 // bytes of unreplayed records
	segMax int64

	mu   sync.Mutex
	segs []segment // oldest first; the last is written to
	w    *os.File  // the last segment, open for append
	rpos int64     // read offset in segs[0]
	size int64     // unreplayed bytes
	msgs int       // unreplayed messages
	pts  int       // unreplayed points
	recs int       // unreplayed records
	// notify gets a token when a record is appended (the replayer waits
	// on it when the spool is empty).
	notify chan struct{}
	// discarded is what Open had to cut off as corrupt (not torn).
	discardedMsgs, discardedPts int
}

type segment struct {
	seq  uint64
	size int64 // bytes of complete records
}

const (
	spoolHeader     = 16
	spoolSegmentMax = 16 << 20
	spoolIndex      = "index"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func segName(seq uint64) string { return fmt.Sprintf("seg-%016d.lp", seq) }

// openSpool opens (creating) the spool in dir, bounded to max bytes, and
// recovers what a previous process left: unreplayed records are kept, a
// torn last record is cut off.
func openSpool(dir string, max int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create spool dir %s: %w", dir, err)
	}
	s := &spool{dir: dir, max: max, segMax: min(spoolSegmentMax, max/4+1), notify: make(chan struct{}, 1)}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list spool dir %s: %w", dir, err)
	}
	var seqs []uint64
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "seg-") || !strings.HasSuffix(name, ".lp") {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(name, "seg-"), ".lp"), 10, 64)
		if err != nil {
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	rseq, roff := s.readIndex()
	for _, seq := range seqs {
		path := filepath.Join(dir, segName(seq))
		if seq < rseq {
			_ = os.Remove(path) // fully replayed before the crash
			continue
		}
		start := int64(0)
		if seq == rseq {
			start = roff
		}
		seg, err := s.recoverSegment(path, seq, start)
		if err != nil {
			return nil, err
		}
		if len(s.segs) == 0 {
			s.rpos = start
		}
		s.segs = append(s.segs, seg)
	}
	// Always write to a fresh segment: never append after a cut-off tail.
	next := uint64(1)
	if len(seqs) > 0 {
		next = seqs[len(seqs)-1] + 1
	}
	if err := s.newSegment(next); err != nil {
		return nil, err
	}
	if len(s.segs) == 1 { // nothing recovered: the index points at the new segment
		s.rpos = 0
		if err := s.writeIndex(next, 0); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// recoverSegment validates the records of one segment from start, counts
// them, and truncates the file after the last good record.
func (s *spool) recoverSegment(path string, seq uint64, start int64) (segment, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return segment{}, fmt.Errorf("open spool segment %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return segment{}, fmt.Errorf("stat spool segment %s: %w", path, err)
	}
	pos := start
	for pos < st.Size() {
		lines, msgs, pts, err := readRecord(f, pos, st.Size())
		if err != nil {
			if pos+spoolHeader <= st.Size() && !errors.Is(err, io.ErrUnexpectedEOF) {
				// Not a torn tail: a damaged record. What follows it in
				// this segment cannot be framed any more.
				s.discardedMsgs += msgs
				s.discardedPts += pts
			}
			break
		}
		n := spoolHeader + int64(len(lines))
		pos += n
		s.size += n
		s.msgs += msgs
		s.pts += pts
		s.recs++
	}
	if pos < st.Size() {
		if err := f.Truncate(pos); err != nil {
			return segment{}, fmt.Errorf("cut torn record off %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			return segment{}, fmt.Errorf("sync %s: %w", path, err)
		}
	}
	return segment{seq: seq, size: pos}, nil
}

// readRecord reads the record at off of a file of size bytes.
func readRecord(f *os.File, off, size int64) (lines []byte, msgs, pts int, err error) {
	var h [spoolHeader]byte
	if off+spoolHeader > size {
		return nil, 0, 0, io.ErrUnexpectedEOF
	}
	if _, err := f.ReadAt(h[:], off); err != nil {
		return nil, 0, 0, fmt.Errorf("read spool record header: %w", err)
	}
	n := int64(binary.LittleEndian.Uint32(h[0:]))
	msgs = int(binary.LittleEndian.Uint32(h[4:]))
	pts = int(binary.LittleEndian.Uint32(h[8:]))
	if off+spoolHeader+n > size {
		return nil, 0, 0, io.ErrUnexpectedEOF
	}
	lines = make([]byte, n)
	if _, err := f.ReadAt(lines, off+spoolHeader); err != nil {
		return nil, 0, 0, fmt.Errorf("read spool record: %w", err)
	}
	crc := crc32.Update(crc32.Checksum(h[:12], crcTable), crcTable, lines)
	if crc != binary.LittleEndian.Uint32(h[12:]) {
		return nil, msgs, pts, errors.New("spool record checksum mismatch")
	}
	return lines, msgs, pts, nil
}

func (s *spool) readIndex() (seq uint64, off int64) {
	b, err := os.ReadFile(filepath.Join(s.dir, spoolIndex))
	if err != nil {
		return 0, 0
	}
	a, c, ok := strings.Cut(strings.TrimSpace(string(b)), " ")
	if !ok {
		return 0, 0
	}
	seq, err1 := strconv.ParseUint(a, 10, 64)
	off, err2 := strconv.ParseInt(c, 10, 64)
	if err1 != nil || err2 != nil || off < 0 {
		return 0, 0
	}
	return seq, off
}

// writeIndex replaces the index atomically.
func (s *spool) writeIndex(seq uint64, off int64) error {
	tmp := filepath.Join(s.dir, spoolIndex+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("write spool index: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d %d\n", seq, off)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(s.dir, spoolIndex))
	}
	if err != nil {
		return fmt.Errorf("write spool index: %w", err)
	}
	return nil
}

func (s *spool) newSegment(seq uint64) error {
	f, err := os.OpenFile(filepath.Join(s.dir, segName(seq)), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("create spool segment: %w", err)
	}
	// The new file's directory entry must be durable too.
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if s.w != nil {
		s.w.Close()
	}
	s.w = f
	s.segs = append(s.segs, segment{seq: seq})
	return nil
}

// append writes one batch and fsyncs it. ErrSpoolFull means it does not
// fit; any other error means the disk failed. Either way nothing of it is
// in the spool.
func (s *spool) append(lines []byte, msgs, pts int) error {
	n := spoolHeader + int64(len(lines))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size+n > s.max {
		return ErrSpoolFull
	}
	last := &s.segs[len(s.segs)-1]
	if last.size > 0 && last.size+n > s.segMax {
		if err := s.newSegment(last.seq + 1); err != nil {
			return err
		}
		last = &s.segs[len(s.segs)-1]
	}
	rec := make([]byte, n)
	binary.LittleEndian.PutUint32(rec[0:], uint32(len(lines)))
	binary.LittleEndian.PutUint32(rec[4:], uint32(msgs))
	binary.LittleEndian.PutUint32(rec[8:], uint32(pts))
	copy(rec[spoolHeader:], lines)
	binary.LittleEndian.PutUint32(rec[12:], crc32.Update(crc32.Checksum(rec[:12], crcTable), crcTable, lines))
	_, err := s.w.Write(rec)
	if err == nil {
		err = s.w.Sync()
	}
	if err != nil {
		// Cut a partial record off so the next append frames correctly.
		_ = s.w.Truncate(last.size)
		return fmt.Errorf("append to spool %s: %w", s.dir, err)
	}
	last.size += n
	s.size += n
	s.msgs += msgs
	s.pts += pts
	s.recs++
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return nil
}

// spoolRead is a run of records read for replay, and where it ends.
type spoolRead struct {
	lines      []byte
	msgs, pts  int
	recs       int
	bytes      int64
	seg        int // index in segs when read (segments only go away by commit)
	seq        uint64
	start, end int64
}

// read returns the oldest records, up to maxPoints points (at least one
// record), from a single segment. ok is false when the spool is empty.
func (s *spool) read(maxPoints int) (r spoolRead, ok bool, err error) {
	s.mu.Lock()
	// Skip to the first segment with unread records; fully read, older
	// segments are removed by commit, so this is segs[0] or the next.
	for len(s.segs) > 1 && s.rpos >= s.segs[0].size {
		s.dropFirst()
	}
	seg := s.segs[0]
	start := s.rpos
	s.mu.Unlock()
	if start >= seg.size {
		return r, false, nil
	}
	f, err := os.Open(filepath.Join(s.dir, segName(seg.seq)))
	if err != nil {
		return r, false, fmt.Errorf("open spool segment: %w", err)
	}
	defer f.Close()
	r.seq, r.start = seg.seq, start
	pos := start
	for pos < seg.size && (r.recs == 0 || r.pts < maxPoints) {
		lines, msgs, pts, err := readRecord(f, pos, seg.size)
		if err != nil {
			if r.recs > 0 {
				break // hand over what was good; the next read reports it
			}
			return r, false, fmt.Errorf("read spool segment %d at %d: %w", seg.seq, pos, err)
		}
		if r.recs > 0 && r.pts+pts > maxPoints {
			break
		}
		r.lines = append(r.lines, lines...)
		r.msgs += msgs
		r.pts += pts
		r.recs++
		pos += spoolHeader + int64(len(lines))
	}
	r.end = pos
	r.bytes = pos - start
	return r, true, nil
}

// commit records that r was written: the index moves past it and fully
// replayed segments are removed.
func (s *spool) commit(r spoolRead) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.segs) == 0 || s.segs[0].seq != r.seq || s.rpos != r.start {
		return errors.New("spool commit out of order")
	}
	s.rpos = r.end
	s.size -= r.bytes
	s.msgs -= r.msgs
	s.pts -= r.pts
	s.recs -= r.recs
	if len(s.segs) > 1 && s.rpos >= s.segs[0].size {
		s.dropFirst()
	}
	return s.writeIndex(s.segs[0].seq, s.rpos)
}

// dropFirst removes the first (fully read) segment. Called with mu held
// and more than one segment.
func (s *spool) dropFirst() {
	_ = os.Remove(filepath.Join(s.dir, segName(s.segs[0].seq)))
	s.segs = s.segs[1:]
	s.rpos = 0
}

// stats returns the unreplayed bytes, messages and points.
func (s *spool) stats() (bytes int64, msgs, pts int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size, s.msgs, s.pts
}

func (s *spool) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recs == 0
}

func (s *spool) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return nil
	}
	err := s.w.Close()
	s.w = nil
	return err
}
