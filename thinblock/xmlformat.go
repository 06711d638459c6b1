package thinblock

import (
	"bufio"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
)

// sectorSize is the unit thin_dump counts data_block_size in.
const sectorSize = 512

// Dump writes the pool's metadata in the XML format of thin_dump (from
// thin-provisioning-tools), so thin_restore can load it. Each device also
// carries its virtual size in a thinblock_size attribute, which
// thin_restore ignores and Restore reads back.
func (p *Pool) Dump(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p.mu.Lock()
	sb := p.sb
	p.mu.Unlock()
	uuid := ""
	if sb.UUID != ([16]byte{}) {
		uuid = hex.EncodeToString(sb.UUID[:])
	}
	fmt.Fprintf(bw, "<superblock uuid=%q time=\"%d\" transaction=\"%d\" flags=\"0\" version=\"2\" data_block_size=\"%d\" nr_data_blocks=\"%d\">\n",
		uuid, sb.Time, sb.TxnID, sb.DataBlockSize/sectorSize, p.data.Blocks())
	vols, err := p.Volumes()
	if err != nil {
		return err
	}
	for _, vi := range vols {
		d, err := p.Details(vi.ID)
		if err != nil {
			return err
		}
		fmt.Fprintf(bw, "  <device dev_id=\"%d\" mapped_blocks=\"%d\" transaction=\"%d\" creation_time=\"%d\" snap_time=\"%d\" thinblock_size=\"%d\">\n",
			vi.ID, d.Mapped, d.TxnID, d.CreationTime, d.SnapTime, d.SizeBytes)
		v, err := p.Volume(vi.ID)
		if err != nil {
			return err
		}
		ms, err := v.Mappings(0, ^uint64(0))
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.Length == 1 {
				fmt.Fprintf(bw, "    <single_mapping origin_block=\"%d\" data_block=\"%d\" time=\"%d\"/>\n", m.VirtualBlock, m.DataBlock, m.Time)
			} else {
				fmt.Fprintf(bw, "    <range_mapping origin_begin=\"%d\" data_begin=\"%d\" length=\"%d\" time=\"%d\"/>\n",
					m.VirtualBlock, m.DataBlock, m.Length, m.Time)
			}
		}
		fmt.Fprintf(bw, "  </device>\n")
	}
	fmt.Fprintf(bw, "</superblock>\n")
	return bw.Flush()
}

// DumpHeader is the superblock element of a dump, which decides the
// shape of the pool to restore into.
type DumpHeader struct {
	BlockSize  uint64 // bytes
	DataBlocks uint64
	Time       uint32
}

// ReadDumpHeader reads the superblock element of a thin_dump XML stream.
func ReadDumpHeader(r io.Reader) (DumpHeader, error) {
	dec := xml.NewDecoder(r)
	for {
		tok, err := dec.Token()
		if err != nil {
			return DumpHeader{}, fmt.Errorf("dump: no superblock element: %w", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if se.Name.Local != "superblock" {
				return DumpHeader{}, fmt.Errorf("dump: first element is <%s>, want <superblock>", se.Name.Local)
			}
			a := attrs(se)
			var h DumpHeader
			sectors, err := a.uint("data_block_size")
			if err != nil {
				return h, err
			}
			h.BlockSize = sectors * sectorSize
			if h.DataBlocks, err = a.uint("nr_data_blocks"); err != nil {
				return h, err
			}
			t, err := a.uint("time")
			h.Time = uint32(t)
			return h, err
		}
	}
}

// Restore loads the devices and mappings of a thin_dump XML stream into
// the (new, empty) pool. A device without a thinblock_size gets the size
// of its highest mapped block, or one block if it maps none.
func (p *Pool) Restore(r io.Reader, progress func(devices int)) error {
	dec := xml.NewDecoder(r)
	var dev uint64
	inDevice := false
	devices := 0
	// A device's mappings wait for its end tag: its size may have to be
	// taken from the highest one.
	type mappingRun struct {
		virtual, data, length uint64
		time                  uint32
	}
	var pending []mappingRun
	var devAttrs attrMap
	flush := func() error {
		size, err := devAttrs.uintOr("thinblock_size", 0)
		if err != nil {
			return err
		}
		if size == 0 {
			var maxBlock uint64
			for _, m := range pending {
				maxBlock = max(maxBlock, m.virtual+m.length)
			}
			size = max(maxBlock, 1) * p.BlockSize()
		}
		ct, err := devAttrs.uintOr("creation_time", 0)
		if err != nil {
			return err
		}
		st, err := devAttrs.uintOr("snap_time", 0)
		if err != nil {
			return err
		}
		if err := p.ImportVolume(dev, size, uint32(ct), uint32(st)); err != nil {
			return err
		}
		for _, m := range pending {
			for k := uint64(0); k < m.length; k++ {
				if err := p.ImportMapping(dev, m.virtual+k, m.data+k, m.time); err != nil {
					return err
				}
			}
		}
		devices++
		if progress != nil {
			progress(devices)
		}
		return nil
	}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("dump: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			a := attrs(t)
			switch t.Name.Local {
			case "superblock":
				tm, err := a.uintOr("time", 0)
				if err != nil {
					return err
				}
				p.SetTime(uint32(tm))
			case "device":
				if inDevice {
					return fmt.Errorf("dump: nested <device>")
				}
				if dev, err = a.uint("dev_id"); err != nil {
					return err
				}
				inDevice, devAttrs, pending = true, a, nil
			case "single_mapping", "range_mapping":
				if !inDevice {
					return fmt.Errorf("dump: <%s> outside a <device>", t.Name.Local)
				}
				var vb, db, n uint64
				if t.Name.Local == "single_mapping" {
					if vb, err = a.uint("origin_block"); err == nil {
						db, err = a.uint("data_block")
					}
					n = 1
				} else {
					if vb, err = a.uint("origin_begin"); err == nil {
						if db, err = a.uint("data_begin"); err == nil {
							n, err = a.uint("length")
						}
					}
				}
				if err != nil {
					return err
				}
				tm, err := a.uintOr("time", 0)
				if err != nil {
					return err
				}
				pending = append(pending, mappingRun{virtual: vb, data: db, length: n, time: uint32(tm)})
			}
		case xml.EndElement:
			if t.Name.Local == "device" {
				if err := flush(); err != nil {
					return err
				}
				inDevice = false
			}
		}
	}
	return p.Commit()
}

type attrMap map[string]string

func attrs(se xml.StartElement) attrMap {
	m := attrMap{}
	for _, a := range se.Attr {
		m[a.Name.Local] = a.Value
	}
	return m
}

func (a attrMap) uint(name string) (uint64, error) {
	v, ok := a[name]
	if !ok {
		return 0, fmt.Errorf("dump: missing attribute %s", name)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("dump: attribute %s=%q: %w", name, v, err)
	}
	return n, nil
}

func (a attrMap) uintOr(name string, def uint64) (uint64, error) {
	if _, ok := a[name]; !ok {
		return def, nil
	}
	return a.uint(name)
}
