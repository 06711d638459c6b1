package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
)

// families lists the report's families in order.
func (rep *Report) families() []Family {
	var out []Family
	for _, f := range []Family{Union, Rootless, Container, Block, LivePool} {
		for _, r := range rep.Rows {
			if r.Family == f {
				out = append(out, f)
				break
			}
		}
	}
	return out
}

// columns lists a family's targets and workloads in the order measured.
func (rep *Report) columns(f Family) (targets, workloads []string) {
	seenT, seenW := map[string]bool{}, map[string]bool{}
	for _, r := range rep.Rows {
		if r.Family != f {
			continue
		}
		if !seenT[r.Target] {
			seenT[r.Target] = true
			targets = append(targets, r.Target)
		}
		if !seenW[r.Workload] {
			seenW[r.Workload] = true
			workloads = append(workloads, r.Workload)
		}
	}
	return targets, workloads
}

func formatValue(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Markdown writes one table per family: each figure with its ratio to the
// family's reference (above 1 is better) and the spread of its repeats,
// then why rows are missing, then the machine and versions.
func (rep *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "unionbench run of %s (%s, %d repeat(s)); ratios are to the first column's reference, above 1 is better.\n\n",
		rep.Date.Format("2006-01-02 15:04 UTC"), map[bool]string{true: "quick", false: "full"}[rep.Quick], rep.Repeat)
	for _, f := range rep.families() {
		targets, workloads := rep.columns(f)
		fmt.Fprintf(w, "### %s (reference: %s)\n\n| workload | unit | %s |\n|---|---|%s\n", f, f.Reference(),
			strings.Join(targets, " | "), strings.Repeat("---|", len(targets)))
		var notes []string
		for _, wl := range workloads {
			unit := ""
			var cells []string
			for _, t := range targets {
				r := rep.find(f, t, wl)
				switch {
				case r == nil:
					cells = append(cells, "")
				case r.Skipped != "":
					cells = append(cells, "skipped")
					notes = append(notes, fmt.Sprintf("%s / %s: skipped, %s", t, wl, r.Skipped))
				case r.Error != "":
					cells = append(cells, "failed")
					notes = append(notes, fmt.Sprintf("%s / %s: failed, %s", t, wl, r.Error))
				default:
					unit = r.Unit
					cell := formatValue(r.Median())
					if ratio := rep.Ratio(r); ratio > 0 && t != f.Reference() {
						cell += fmt.Sprintf(" (%.2fx)", ratio)
					}
					if s := r.Spread(); s > 0 {
						cell += fmt.Sprintf(" ±%.0f%%", 100*s/2)
					}
					cells = append(cells, cell)
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s |\n", wl, unit, strings.Join(cells, " | "))
		}
		fmt.Fprintln(w)
		for _, n := range dedupe(notes) {
			fmt.Fprintf(w, "- %s\n", n)
		}
		if len(notes) > 0 {
			fmt.Fprintln(w)
		}
	}
	fmt.Fprintf(w, "Machine: %s. Versions: %s.\n", joinMap(rep.Machine), joinMap(rep.Versions))
}

// dedupe folds notes that say the same for every workload of a target.
func dedupe(notes []string) []string {
	byReason := map[string][]string{}
	var order []string
	for _, n := range notes {
		target, rest, _ := strings.Cut(n, " / ")
		_, reason, _ := strings.Cut(rest, ": ")
		key := target + ": " + reason
		if _, ok := byReason[key]; !ok {
			order = append(order, key)
		}
		byReason[key] = append(byReason[key], n)
	}
	var out []string
	for _, k := range order {
		if len(byReason[k]) > 1 {
			out = append(out, fmt.Sprintf("%s (%d workloads)", k, len(byReason[k])))
		} else {
			out = append(out, byReason[k][0])
		}
	}
	return out
}

func joinMap(m map[string]string) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+" "+m[k])
	}
	return strings.Join(parts, "; ")
}

// WriteJSON stores the whole report, every raw figure included.
func (rep *Report) WriteJSON(path string) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// ReadJSON loads a report written by WriteJSON.
func ReadJSON(path string) (*Report, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &rep, nil
}

// Compare prints the figures that moved beyond the noise between two
// runs: more than the larger spread of the two, and at least 10%.
func Compare(w io.Writer, old, cur *Report) int {
	moved := 0
	for i := range cur.Rows {
		n := &cur.Rows[i]
		o := old.find(n.Family, n.Target, n.Workload)
		if o == nil || len(o.Values) == 0 || len(n.Values) == 0 || o.Median() == 0 || n.Median() == 0 {
			continue
		}
		change := n.Median() / o.Median()
		if !n.HigherBetter {
			change = o.Median() / n.Median()
		}
		noise := math.Max(0.10, math.Max(o.Spread(), n.Spread()))
		switch {
		case change > 1+noise:
			fmt.Fprintf(w, "faster  %-24s %-28s %.2fx (%s -> %s %s)\n", n.Target, n.Workload, change, formatValue(o.Median()), formatValue(n.Median()), n.Unit)
			moved++
		case change < 1/(1+noise):
			fmt.Fprintf(w, "slower  %-24s %-28s %.2fx (%s -> %s %s)\n", n.Target, n.Workload, change, formatValue(o.Median()), formatValue(n.Median()), n.Unit)
			moved++
		}
	}
	if moved == 0 {
		fmt.Fprintln(w, "no figure moved beyond the noise")
	}
	return moved
}
