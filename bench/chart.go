package bench

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Charts writes one grouped bar chart per family, ratios to the
// reference on a log axis, as SVG and PNG in dir; it returns the files.
func (rep *Report) Charts(dir string) ([]string, error) {
	var files []string
	palette := []color.RGBA{{31, 119, 180, 255}, {255, 127, 14, 255}, {44, 160, 44, 255}, {214, 39, 40, 255},
		{148, 103, 189, 255}, {140, 86, 75, 255}, {227, 119, 194, 255}}
	for _, f := range rep.families() {
		targets, workloads := rep.columns(f)
		p := plot.New()
		// Bars grow from parity (1x): up when better than the reference,
		// down when worse, on a log axis labelled in ratios.
		p.Title.Text = fmt.Sprintf("%s: speed relative to %s (log scale, above 1x is better)", f, f.Reference())
		p.Y.Label.Text = "ratio to " + f.Reference()
		p.Y.Tick.Marker = ratioTicks{}
		p.Legend.Top = true
		width := vg.Points(8)
		var shown []string
		for _, t := range targets {
			if t != f.Reference() {
				shown = append(shown, t)
			}
		}
		for i, t := range shown {
			values := make(plotter.Values, len(workloads))
			for j, wl := range workloads {
				// No figure: no bar.
				if r := rep.find(f, t, wl); r != nil {
					if ratio := rep.Ratio(r); ratio > 0 {
						values[j] = math.Log10(ratio)
					}
				}
			}
			bars, err := plotter.NewBarChart(values, width)
			if err != nil {
				return nil, err
			}
			bars.Color = palette[i%len(palette)]
			bars.LineStyle.Width = 0
			bars.Offset = vg.Length(float64(i)-float64(len(shown)-1)/2) * width
			p.Add(bars)
			p.Legend.Add(t, bars)
		}
		p.Add(plotter.NewGrid())
		p.NominalX(workloads...)
		p.X.Tick.Label.Rotation = 0.6
		p.X.Tick.Label.XAlign = -1
		p.Y.Min, p.Y.Max = -2, 2
		for _, ext := range []string{"svg", "png"} {
			file := filepath.Join(dir, fmt.Sprintf("unionbench-%s.%s", f, ext))
			w := vg.Length(90+len(workloads)*len(shown)*12) * vg.Millimeter / 4
			if err := p.Save(max(w, 20*vg.Centimeter), 14*vg.Centimeter, file); err != nil {
				return nil, err
			}
			files = append(files, file)
		}
	}
	return files, nil
}

// ratioTicks labels a log10 axis in ratios: 0.01x ... 100x.
type ratioTicks struct{}

func (ratioTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(min); e <= max; e++ {
		ticks = append(ticks, plot.Tick{Value: e, Label: fmt.Sprintf("%gx", math.Pow(10, e))})
		for _, m := range []float64{2, 5} {
			if v := e + math.Log10(m); v <= max {
				ticks = append(ticks, plot.Tick{Value: v})
			}
		}
	}
	return ticks
}
